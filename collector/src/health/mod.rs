//! Node health: what the kernel says about the node beyond deaths, per pod where a task is
//! involved. The kernel probes ([`crate::probe::HEALTH_PROBES`]) report hung tasks, kernel log
//! lines and filesystem, block and memory errors; [`kmsg`] matches log lines against
//! node-problem-detector's rules; [`pressure`] samples each container's memory stall (PSI);
//! [`conditions`] keeps the node conditions NPD would set, which the daemon patches onto the Node.

pub mod conditions;
pub mod kmsg;
pub mod pressure;
