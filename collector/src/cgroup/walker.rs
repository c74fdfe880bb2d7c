//! The cgroup tree walk, on its own thread: a walk of a big tree takes milliseconds (1,000
//! cgroups: about 15 ms here), and the thread that drains the ring must not wait for it.

use std::{
    sync::{
        Arc,
        mpsc::{self, Receiver, SyncSender, TryRecvError},
    },
    time::Instant,
};

use tokio::sync::Notify;

use super::CgroupTree;

/// One finished walk: every cgroup as (id, path), and when it started and ended.
#[derive(Debug)]
pub(super) struct Walk {
    pub(super) found: Vec<(u64, String)>,
    pub(super) started: Instant,
    pub(super) ended: Instant,
}

/// A thread that walks the tree when asked, one walk at a time, and wakes the asker when done.
#[derive(Debug)]
pub(super) struct Walker {
    requests: SyncSender<()>,
    results: Receiver<Walk>,
    done: Arc<Notify>,
    in_flight: bool,
}

impl Walker {
    /// Starts the thread; it ends when the walker is dropped.
    pub(super) fn spawn(tree: CgroupTree) -> std::io::Result<Self> {
        let (requests, asked) = mpsc::sync_channel::<()>(1);
        let (answer, results) = mpsc::channel();
        let done = Arc::new(Notify::new());
        let wake = Arc::clone(&done);
        std::thread::Builder::new().name("cgroup-walk".to_owned()).spawn(move || {
            while asked.recv().is_ok() {
                let started = Instant::now();
                let found = tree.walk();
                if answer.send(Walk { found, started, ended: Instant::now() }).is_err() {
                    return;
                }
                wake.notify_one();
            }
        })?;
        Ok(Self { requests, results, done, in_flight: false })
    }

    /// Starts a walk unless one is running; false if the thread is gone.
    pub(super) fn start(&mut self) -> bool {
        if !self.in_flight {
            self.in_flight = self.requests.try_send(()).is_ok();
        }
        self.in_flight
    }

    /// Whether a walk was asked for and its result not yet taken.
    pub(super) const fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The finished walk, if there is one; with `block`, waits for the running one.
    pub(super) fn finished(&mut self, block: bool) -> Option<Walk> {
        if !self.in_flight {
            return None;
        }
        let walk = if block {
            self.results.recv().ok()
        } else {
            match self.results.try_recv() {
                Ok(walk) => Some(walk),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => None,
            }
        };
        // Taken, or the thread died (a panic in a walk): either way nothing is running now.
        self.in_flight = false;
        walk
    }

    /// Notified each time a walk finishes.
    pub(super) fn done(&self) -> Arc<Notify> {
        Arc::clone(&self.done)
    }
}
