//! The collector: explains why containers die.
//!
//! Data flows through one module per stage: [`probe`] loads the kernel
//! programs, [`reader`] takes their records off the ring buffer, [`decode`]
//! types them, [`cgroup`] resolves where they happened, and [`trace`] filters
//! and prints them. [`recorder`] decides which Kubernetes Events to write, with
//! the kubelet's client-go semantics.

pub mod cgroup;
pub mod clock;
pub mod decode;
pub mod escape;
pub mod mountinfo;
pub mod probe;
pub mod reader;
pub mod record;
pub mod recorder;
pub mod trace;
