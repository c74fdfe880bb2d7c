//! Ring buffer reader: hands each record the kernel submitted, as bytes, to the
//! next stage.
//!
//! A wake-up on every record would cost the kernel more than its probes, and a timer that
//! never stops costs an idle node more than its records (some 50 µs of CPU per sleep and
//! wake-up on a VM). So the reader has two modes:
//!
//! - polling: while records come, it drains the ring every [`POLL_INTERVAL`], and the kernel
//!   wakes it only when the ring is filling up. A record waits at most one period.
//! - idle: after [`IDLE_AFTER`] empty polls it stops its timer and sets `READER_IDLE`; the
//!   next submit wakes it at once (and clears the flag), and it polls again.
//!
//! Going idle races a record being written: one submitted before the kernel saw the flag
//! wakes no one. The reader drains once more after setting the flag and stays polling if the
//! ring is not empty then; should a record still slip through, it waits at most
//! [`IDLE_CHECK`].

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use aya::maps::{Array, MapData, MapError, RingBuf};
use thiserror::Error;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Instant, Interval, MissedTickBehavior},
};

use crate::probe::Ring;

/// How often the reader drains the ring while records come: the most a record waits in it.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Empty polls in a row (100 ms without a record) after which the reader goes idle. Below
/// about ten records a second, each record then costs one kernel wake-up (some 30 µs of the
/// exiting task's time on a VM) instead of a hundred polls a second.
pub const IDLE_AFTER: u32 = 10;

/// While idle, the reader still looks this often, for a record whose submit raced its going idle.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Errors of the ring reader.
#[derive(Debug, Error)]
pub enum ReaderError {
    /// The ring buffer could not be registered with the event loop.
    #[error("cannot watch the ring buffer")]
    Register(#[source] io::Error),
    /// `READER_IDLE` could not be written.
    #[error("cannot set the ring reader's idle flag (READER_IDLE)")]
    IdleFlag(#[source] MapError),
}

impl From<ReaderError> for io::Error {
    fn from(err: ReaderError) -> Self {
        Self::other(err)
    }
}

/// Reads records from the probes' ring buffer.
pub struct RingReader {
    ring: AsyncFd<RingBuf<MapData>>,
    reader_idle: Array<MapData, u32>,
    tick: Interval,
    /// Polls in a row that found nothing.
    empty_polls: u32,
    /// Set while idle: when to look anyway.
    idle_until: Option<Instant>,
}

impl RingReader {
    /// Registers the ring buffer with the tokio reactor.
    pub fn new(ring: Ring) -> Result<Self, ReaderError> {
        let Ring { records, reader_idle } = ring;
        // SAFETY: the RingBuf owns its map fd and keeps it open for as long
        // as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(records, Interest::READABLE) }
            .map_err(|err| ReaderError::Register(err.into()))?;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        // After a stall, one drain catches up: a burst of ticks would find nothing more.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self { ring, reader_idle, tick, empty_polls: 0, idle_until: None })
    }

    /// Waits until records arrive (a wake-up from the kernel or the next poll
    /// that finds some), then hands every available one to `handle`.
    /// Returns how many were handled. Cancel-safe: what it learned stays in `self`.
    pub async fn next_batch(&mut self, mut handle: impl FnMut(&[u8])) -> io::Result<usize> {
        loop {
            let woken = match self.idle_until {
                Some(deadline) => tokio::select! {
                    guard = self.ring.readable_mut() => Some(guard?),
                    () = tokio::time::sleep_until(deadline) => None,
                },
                None => tokio::select! {
                    guard = self.ring.readable_mut() => Some(guard?),
                    _ = self.tick.tick() => None,
                },
            };
            let count = match woken {
                Some(mut guard) => {
                    let count = drain(guard.get_inner_mut(), &mut handle);
                    // Only now: records submitted while draining re-arm the readiness.
                    guard.clear_ready();
                    count
                }
                None => drain(self.ring.get_mut(), &mut handle),
            };
            if count > 0 {
                self.poll_again();
                return Ok(count);
            }
            match self.idle_until {
                // A wake-up that found nothing (readiness left from a drain) or the check.
                Some(_) => self.idle_until = Some(Instant::now() + IDLE_CHECK),
                None => {
                    self.empty_polls += 1;
                    if self.empty_polls >= IDLE_AFTER {
                        let count = self.go_idle(&mut handle)?;
                        if count > 0 {
                            return Ok(count);
                        }
                    }
                }
            }
        }
    }

    /// Back to polling, from the next period on; the kernel cleared the flag when it woke us.
    fn poll_again(&mut self) {
        self.empty_polls = 0;
        if self.idle_until.take().is_some() {
            self.tick.reset();
        }
    }

    /// Sets the flag, then drains what was submitted before the kernel could see it; goes idle
    /// only if the ring is empty after that. Returns the records handled.
    fn go_idle(&mut self, handle: &mut impl FnMut(&[u8])) -> Result<usize, ReaderError> {
        self.reader_idle.set(0, 1, 0).map_err(ReaderError::IdleFlag)?;
        let count = drain(self.ring.get_mut(), handle);
        if count > 0 || ring_not_empty(self.ring.get_ref()) {
            // Records still come: keep polling, and clear the flag so that the next one does
            // not pay for a wake-up (one that saw it already cleared it; both write 0).
            self.reader_idle.set(0, 0, 0).map_err(ReaderError::IdleFlag)?;
            self.empty_polls = 0;
            return Ok(count);
        }
        self.idle_until = Some(Instant::now() + IDLE_CHECK);
        Ok(0)
    }

    /// Hands every record already in the buffer to `handle`, without waiting.
    pub fn drain_now(&mut self, mut handle: impl FnMut(&[u8])) -> usize {
        drain(self.ring.get_mut(), &mut handle)
    }
}

fn drain(ring: &mut RingBuf<MapData>, handle: &mut impl FnMut(&[u8])) -> usize {
    let mut count = 0;
    while let Some(item) = ring.next() {
        handle(&item);
        count += 1;
    }
    count
}

/// Whether the kernel has reserved space the reader has not consumed: a record still being
/// written (which `RingBuf::next` does not hand out yet) counts. The ring buffer's poll says
/// so (`ringbuf_map_poll`: readable while the producer is ahead of the consumer).
fn ring_not_empty(ring: &RingBuf<MapData>) -> bool {
    let mut poll_fd = libc::pollfd { fd: ring.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, and a zero timeout: the call only reads the fd's state.
    let ready = unsafe { libc::poll(&raw mut poll_fd, 1, 0) };
    // An error (EINTR, ENOMEM) says nothing: assume a record, and poll once more.
    ready != 0
}
