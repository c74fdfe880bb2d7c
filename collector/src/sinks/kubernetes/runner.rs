//! Draining an outbox of pending writes into the API server.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{Id, JoinSet};

use super::{KubeSink, Outcome};
use crate::sinks::ApiWrite;

/// A durable queue of pending writes (the journal's outbox), identified by
/// increasing ids: a larger id was queued later.
pub trait Outbox: Sync {
    /// Why the outbox could not be read or updated.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Up to `limit` pending writes with an id greater than `after` (all if
    /// `None`), oldest first.
    fn next_batch(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(i64, ApiWrite)>, Self::Error>> + Send;

    /// The write `id` is finished with ([`Outcome::is_final`]: delivered,
    /// rejected, or printed by a dry run) and must not be returned again.
    /// Never called for [`Outcome::GaveUp`]: such writes stay pending.
    ///
    /// If this fails the write may be sent again later; that is harmless
    /// (a repeated POST meets AlreadyExists, a repeated PATCH sets the same count).
    fn mark_done(&self, id: i64, outcome: Outcome) -> Result<(), Self::Error>;
}

/// Tuning of [`Runner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Writes taken from the outbox and not yet finished, at most: the memory bound.
    pub max_held: usize,
    /// Of those, at most this many for one event name, so one event cannot take all the room.
    pub max_per_name: usize,
    /// How often to look for new writes (and retry left-over ones) once the outbox is drained.
    pub poll: Duration,
}

impl Default for RunnerConfig {
    /// 256 held, 16 per event name, polling every second.
    fn default() -> Self {
        Self { max_held: 256, max_per_name: 16, poll: Duration::from_secs(1) }
    }
}

/// (namespace, name): the writes of one event, which must reach the server in order.
type Key = (String, String);

#[derive(Default)]
struct Lane {
    queue: VecDeque<(i64, ApiWrite)>,
    busy: bool,
}

/// Drains an [`Outbox`] through a [`KubeSink`].
///
/// Writes are taken oldest first in passes over the outbox. Each event name is
/// a lane whose writes go one at a time in id order (a PATCH never overtakes
/// its POST); lanes run concurrently. When a lane cannot take a write (it is
/// full, or gave up earlier in this pass), that write and every later write of
/// the same event are skipped for this pass; a new pass from the oldest pending
/// write starts at the next poll. Writes that gave up, and anything in flight
/// at shutdown, stay in the outbox.
pub struct Runner {
    sink: Arc<KubeSink>,
    config: RunnerConfig,
    wake: Option<Arc<Notify>>,
}

#[derive(Default)]
struct State {
    lanes: HashMap<Key, Lane>,
    held: HashSet<i64>,
    /// Keys that must take no more writes until the next pass.
    blocked: HashSet<Key>,
    cursor: Option<i64>,
    /// This pass has reached the newest pending write.
    drained: bool,
}

impl Runner {
    /// A runner delivering through `sink`.
    pub fn new(sink: Arc<KubeSink>, config: RunnerConfig) -> Self {
        Self { sink, config, wake: None }
    }

    /// Also look for new writes as soon as `notify` is notified (e.g. by the journal on append).
    pub fn wake_on(mut self, notify: Arc<Notify>) -> Self {
        self.wake = Some(notify);
        self
    }

    /// Deliver until `shutdown` completes.
    pub async fn run<O: Outbox>(&self, outbox: &O, shutdown: impl Future<Output = ()>) {
        let max_held = self.config.max_held.max(1);
        let mut state = State::default();
        let mut jobs = JoinSet::new();
        let mut running: HashMap<Id, (Key, i64)> = HashMap::new();
        tokio::pin!(shutdown);
        loop {
            while let Some(done) = jobs.try_join_next_with_id() {
                finish(outbox, &mut state, &mut running, done);
            }
            if !state.drained && state.held.len() < max_held {
                let limit = max_held - state.held.len();
                match outbox.next_batch(state.cursor, limit).await {
                    Ok(batch) => {
                        state.drained = batch.len() < limit;
                        for (id, write) in batch {
                            self.take(&mut state, id, write);
                        }
                        // Skipped names are remembered until the next pass; bound them too.
                        if state.blocked.len() >= max_held {
                            state.drained = true;
                        }
                    }
                    Err(err) => {
                        tracing::warn!("cannot read the outbox: {err}");
                        state.drained = true;
                    }
                }
            }
            self.start_lanes(&mut state, &mut jobs, &mut running);
            if !state.drained && state.held.len() < max_held {
                continue;
            }
            let poll = tokio::time::sleep(self.config.poll);
            let wake = async {
                match &self.wake {
                    Some(notify) => notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                Some(done) = jobs.join_next_with_id() => finish(outbox, &mut state, &mut running, done),
                () = poll, if state.drained => state.new_pass(),
                () = wake, if state.drained => state.drained = false,
            }
        }
    }

    /// Queue a fetched write in its lane, or skip it for this pass.
    fn take(&self, state: &mut State, id: i64, write: ApiWrite) {
        state.cursor = Some(state.cursor.map_or(id, |c| c.max(id)));
        if state.held.contains(&id) {
            return;
        }
        let key = (write.namespace.clone(), write.name.clone());
        if state.blocked.contains(&key) {
            return;
        }
        let lane = state.lanes.entry(key.clone()).or_default();
        if lane.queue.len() + usize::from(lane.busy) >= self.config.max_per_name.max(1) {
            state.blocked.insert(key);
            return;
        }
        lane.queue.push_back((id, write));
        state.held.insert(id);
    }

    /// Start the head write of every idle lane, oldest first.
    fn start_lanes(&self, state: &mut State, jobs: &mut JoinSet<Outcome>, running: &mut HashMap<Id, (Key, i64)>) {
        let idle: BTreeMap<i64, Key> = state
            .lanes
            .iter()
            .filter(|(_, lane)| !lane.busy)
            .filter_map(|(key, lane)| lane.queue.front().map(|(id, _)| (*id, key.clone())))
            .collect();
        for (_, key) in idle {
            let Some(lane) = state.lanes.get_mut(&key) else {
                continue;
            };
            let Some((id, write)) = lane.queue.pop_front() else {
                continue;
            };
            lane.busy = true;
            let sink = Arc::clone(&self.sink);
            let handle = jobs.spawn(async move { sink.deliver(write).await });
            running.insert(handle.id(), (key, id));
        }
    }
}

impl State {
    /// Look for new writes; if some were skipped, start over from the oldest.
    fn new_pass(&mut self) {
        self.drained = false;
        if !self.blocked.is_empty() {
            self.blocked.clear();
            self.cursor = None;
        }
    }
}

/// Book the end of one delivery.
fn finish<O: Outbox>(
    outbox: &O,
    state: &mut State,
    running: &mut HashMap<Id, (Key, i64)>,
    done: Result<(Id, Outcome), tokio::task::JoinError>,
) {
    let (task, outcome) = match done {
        Ok((task, outcome)) => (task, outcome),
        // A delivery that died is treated like one that gave up: the write stays pending.
        Err(err) => (err.id(), Outcome::GaveUp { attempts: 0 }),
    };
    let Some((key, id)) = running.remove(&task) else {
        return;
    };
    state.held.remove(&id);
    if outcome.is_final() {
        if let Err(err) = outbox.mark_done(id, outcome) {
            tracing::warn!("cannot mark write {id} done; it may be sent again: {err}");
        }
        if let Some(lane) = state.lanes.get_mut(&key) {
            lane.busy = false;
            if lane.queue.is_empty() {
                state.lanes.remove(&key);
            }
        }
    } else if let Some(lane) = state.lanes.remove(&key) {
        // Later writes of this event must wait for this one: let them all go
        // back to the outbox and take them again, in order, in a later pass.
        for (later, _) in lane.queue {
            state.held.remove(&later);
        }
        state.blocked.insert(key);
    }
}
