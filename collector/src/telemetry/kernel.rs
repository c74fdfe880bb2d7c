//! The kernel programs' own counters (records lost to a full ring, node-health records over the
//! rate limit, unreadable fields): kept in a BPF map, copied in by the daemon, read at scrape time.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};

use super::{KernelRecordType, TypeLabel};

/// Counters kept by the kernel programs, copied in by the daemon and read at scrape time.
#[derive(Debug, Default)]
pub(super) struct KernelSnapshot {
    /// Records lost because the ring buffer was full, indexed by [`KernelRecordType`].
    lost: [AtomicU64; KernelRecordType::ALL.len()],
    /// Node-health records dropped over the kernel's rate limit, indexed by [`KernelRecordType`].
    limited: [AtomicU64; KernelRecordType::ALL.len()],
    read_failed: AtomicU64,
}

impl Collector for KernelSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        // By type, as `kernel_records` is: records delivered plus records lost is then what
        // the kernel produced, type by type.
        let mut metric = encoder.encode_descriptor(
            "kernel_records_lost",
            "Records the kernel programs dropped because the ring buffer was full, by record type.",
            None,
            MetricType::Counter,
        )?;
        for &kind in KernelRecordType::ALL {
            let counter = ConstCounter::new(self.lost[kind as usize].load(Ordering::Relaxed));
            counter.encode(metric.encode_family(&TypeLabel { r#type: kind })?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "kernel_records_rate_limited",
            "Node-health records the kernel programs dropped over their per-CPU rate limit, by record type.",
            None,
            MetricType::Counter,
        )?;
        for &kind in &KernelRecordType::ALL[KernelRecordType::HungTask as usize..] {
            let counter = ConstCounter::new(self.limited[kind as usize].load(Ordering::Relaxed));
            counter.encode(metric.encode_family(&TypeLabel { r#type: kind })?)?;
        }
        let counter = ConstCounter::new(self.read_failed.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "kernel_field_read_failures",
            "Records the kernel programs sent with a field they could not read.",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

impl super::Metrics {
    /// Stores the kernel programs' own counters, read from their map: records
    /// lost to a full ring buffer, by type, and field reads that failed.
    ///
    /// They are totals kept by the kernel, so they are set, not added; a
    /// reload of the probes restarts them at zero, which Prometheus treats as
    /// a counter reset.
    pub fn set_kernel_counters(&self, lost: impl IntoIterator<Item = (KernelRecordType, u64)>, read_failed: u64) {
        for (kind, count) in lost {
            self.kernel.lost[kind as usize].store(count, Ordering::Relaxed);
        }
        self.kernel.read_failed.store(read_failed, Ordering::Relaxed);
    }

    /// Stores the kernel's counts of node-health records dropped over its rate limit, by type.
    pub fn set_kernel_limited(&self, limited: impl IntoIterator<Item = (KernelRecordType, u64)>) {
        for (kind, count) in limited {
            self.kernel.limited[kind as usize].store(count, Ordering::Relaxed);
        }
    }
}
