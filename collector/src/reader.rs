//! Ring buffer reader: hands each record the kernel submitted, as bytes, to the
//! next stage.
//!
//! A wake-up on every record would cost the kernel more than its probes, so
//! each CPU wakes the reader only rarely (see `probe::WAKEUP_INTERVAL`) or when
//! the ring fills, and the reader also drains every [`POLL_INTERVAL`]. A quiet
//! node's record arrives at once; under load a record waits at most one period.

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Interval, MissedTickBehavior},
};

/// How often the reader looks for records the kernel did not wake it for:
/// the most a record waits in the ring.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Reads records from the probes' ring buffer.
pub struct RingReader {
    ring: AsyncFd<RingBuf<MapData>>,
    tick: Interval,
}

impl RingReader {
    /// Registers the ring buffer with the tokio reactor.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps it open for as long
        // as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(io::Error::from)?;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        // After a stall, one drain catches up: a burst of ticks would find nothing more.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self { ring, tick })
    }

    /// Waits until records arrive (a wake-up from the kernel or the next tick
    /// that finds some), then hands every available one to `handle`.
    /// Returns how many were handled.
    pub async fn next_batch(&mut self, mut handle: impl FnMut(&[u8])) -> io::Result<usize> {
        loop {
            let woken = tokio::select! {
                guard = self.ring.readable_mut() => Some(guard?),
                _ = self.tick.tick() => None,
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
                return Ok(count);
            }
        }
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
