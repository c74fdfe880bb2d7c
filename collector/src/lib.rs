//! The collector: explains why containers die.
//!
//! Data flows through one module per stage: [`probe`] loads the kernel
//! programs, [`reader`] takes their records off the ring buffer, [`decode`]
//! types them, [`cgroup`] resolves where they happened, and [`trace`] filters
//! and prints them. [`recorder`] decides which Kubernetes Events to write, with
//! the kubelet's client-go semantics. [`doctor`] checks what the node gives
//! the collector, for `collector doctor` and when the daemon starts.

pub mod cgroup;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod doctor;
pub mod escape;
pub mod events;
pub mod events_cmd;
pub mod filter;
pub mod identify;
pub mod metadata;
pub mod mountinfo;
pub mod output;
pub mod probe;
pub mod reader;
pub mod record;
pub mod recorder;
pub mod resolve;
pub mod sinks;
pub mod telemetry;
pub mod trace;
