//! The stdout sink: each write the recorder decides, as the Event object it
//! sends (JSON, so `count` grows on repeats) or as `kubectl get events` columns.

use std::io::{self, Write};

use crate::{
    config::OutputFormat,
    escape::{escape_bytes, scrub},
    recorder::Write as EventWrite,
    sinks::handler::{Decided, Dispatch, Handler},
    telemetry::limit::WarnLimit,
};

/// Prints event writes.
pub struct StdoutSink<W: Write> {
    format: OutputFormat,
    out: W,
    header: bool,
    /// Writes that failed, said in each warning.
    failed: u64,
    /// Failures are warned about at the rate every repeating warning is.
    warnings: WarnLimit,
}

impl<W: Write> StdoutSink<W> {
    /// A sink writing `format` to `out`.
    pub const fn new(format: OutputFormat, out: W) -> Self {
        Self { format, out, header: false, failed: 0, warnings: WarnLimit::new() }
    }

    /// Prints one write (a POST or a PATCH) and flushes, so each event shows at once.
    pub fn write(&mut self, write: &EventWrite) -> io::Result<()> {
        let event = write.event();
        match self.format {
            OutputFormat::Json => {
                serde_json::to_writer(&mut self.out, event)?;
                writeln!(self.out)?;
            }
            OutputFormat::Text => {
                if !self.header {
                    writeln!(self.out, "{:<20} {:<8} {:<18} {:<40} MESSAGE", "LAST SEEN", "TYPE", "REASON", "OBJECT")?;
                    self.header = true;
                }
                let object = format!(
                    "{}/{}",
                    event.involved_object.kind.to_lowercase(),
                    escape_bytes(event.involved_object.name.as_bytes())
                );
                let count = if event.count > 1 { format!(" (x{})", event.count) } else { String::new() };
                writeln!(
                    self.out,
                    "{:<20} {:<8} {:<18} {:<40} {}{count}",
                    event.last_timestamp.metav1(),
                    event.event_type.as_str(),
                    escape_bytes(event.reason.as_bytes()),
                    object,
                    // Messages are built from escaped names: escaping again would double backslashes.
                    scrub(&event.message),
                )?;
            }
        }
        self.out.flush()
    }
}

/// On its own thread, so a stdout nobody reads stalls only this handler.
impl<W: Write + Send + 'static> Handler for StdoutSink<W> {
    fn name(&self) -> &str {
        "stdout"
    }

    fn handle(&mut self, dispatch: &Dispatch) {
        for write in dispatch.events.iter().filter_map(Decided::write) {
            if let Err(err) = self.write(write) {
                self.failed += 1;
                if let Some(suppressed) = self.warnings.allow() {
                    tracing::warn!("stdout sink: {err} ({} writes failed so far){suppressed}", self.failed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Timestamp,
        recorder::{Decision, EventSpec, EventType, ObjectReference, Recorder, RecorderConfig, Write as EventWrite},
    };

    fn write(message: &str) -> EventWrite {
        let mut recorder = Recorder::new(RecorderConfig::new("collector", "node-1")).unwrap();
        let pod = ObjectReference::pod("shop", "web-0", "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        let at = Timestamp::from_unix_secs(1_795_862_410);
        match recorder.record(EventSpec::new(pod, EventType::Warning, "ProcessCrashed", message), at) {
            Decision::Write(write) => write,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn text(message: &str) -> String {
        let mut sink = StdoutSink::new(OutputFormat::Text, Vec::new());
        sink.write(&write(message)).unwrap();
        String::from_utf8(sink.out).unwrap()
    }

    #[test]
    fn text_shows_escaped_names_once_and_escapes_what_slipped_through() {
        // The message holds an escaped process name: shown as it is, not as `\\x1b`.
        let out = text("Process 7 (\\x1b[2J) of container app crashed: SIGSEGV");
        let line = out.lines().nth(1).unwrap();
        assert!(line.ends_with(" Process 7 (\\x1b[2J) of container app crashed: SIGSEGV"), "{line}");
        // A raw newline or bidirectional override never reaches the terminal.
        let out = text("a\nb\u{202e}c");
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.ends_with(" a\\x0ab\\xe2\\x80\\xaec\n"), "{out}");
    }
}
