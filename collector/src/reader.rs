//! Ring buffer reader: wakes when the kernel has submitted records and hands
//! each one, as bytes, to the next stage.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

/// Reads records from the probes' ring buffer.
pub struct RingReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl RingReader {
    /// Registers the ring buffer with the tokio reactor.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps it open for as long
        // as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(Self { ring })
    }

    /// Waits until records arrive, then hands every available one to `handle`.
    /// Returns how many were handled.
    pub async fn next_batch(&mut self, mut handle: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let count = drain(guard.get_inner_mut(), &mut handle);
        // Only now: records submitted while draining re-arm the readiness.
        guard.clear_ready();
        Ok(count)
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
