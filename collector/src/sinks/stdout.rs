//! The stdout sink: each write the recorder decides, as the Event object it
//! sends (JSON, so `count` grows on repeats) or as `kubectl get events` columns.

use std::io::{self, Write};

use crate::{config::OutputFormat, escape::escape_bytes, recorder::Write as EventWrite};

/// Prints event writes.
pub struct StdoutSink<W: Write> {
    format: OutputFormat,
    out: W,
    header: bool,
}

impl<W: Write> StdoutSink<W> {
    /// A sink writing `format` to `out`.
    pub const fn new(format: OutputFormat, out: W) -> Self {
        Self { format, out, header: false }
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
                    event.last_timestamp.rfc3339(),
                    event.event_type.as_str(),
                    escape_bytes(event.reason.as_bytes()),
                    object,
                    escape_bytes(event.message.as_bytes()),
                )?;
            }
        }
        self.out.flush()
    }
}
