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
pub mod health;
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

/// An error and every cause below it, `top: cause: root cause`, each said once: a cause whose
/// text its parent already contains (`cannot open ...: {source}`) is not repeated. Errors are
/// printed this way at the edge (the command's exit, a log line).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot listen on 127.0.0.1:9835 for metrics")]
        Bare(#[source] std::io::Error),
        #[error("cannot open the journal: {0}")]
        Embedded(#[source] std::io::Error),
    }

    #[test]
    fn the_whole_cause_chain_is_printed_once() {
        let in_use = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(chain(&Outer::Bare(in_use())), "cannot listen on 127.0.0.1:9835 for metrics: address in use");
        assert_eq!(chain(&Outer::Embedded(in_use())), "cannot open the journal: address in use");
    }
}
