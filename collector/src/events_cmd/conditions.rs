//! `collector events --conditions`: the node conditions the daemon last set (the file it keeps
//! beside the journal), as `kubectl describe node` shows them, without the API server.

use std::io::Write;

use serde_json::json;

use super::{EventsArgs, EventsError, EventsSummary, Format, human_duration, print_table};
use crate::{clock::Timestamp, escape::escape_bytes, sinks::kubernetes::node_status};

/// The columns, as `kubectl describe node` names them.
const HEADERS: [&str; 5] = ["CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"];

/// Prints the conditions saved in `args.state_dir`.
pub(super) fn print(args: &EventsArgs, now: Timestamp, out: &mut dyn Write) -> Result<EventsSummary, EventsError> {
    let conditions = node_status::load(&args.state_dir)
        .map_err(|source| EventsError::Conditions { state_dir: args.state_dir.clone(), source })?
        .ok_or_else(|| EventsError::NoConditions { state_dir: args.state_dir.clone() })?;
    if args.format == Format::Json {
        for condition in &conditions {
            let line = json!({
                "type": condition.kind,
                "status": if condition.status { "True" } else { "False" },
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": condition.last_transition.to_string(),
            });
            writeln!(out, "{line}").map_err(EventsError::Output)?;
        }
        return Ok(EventsSummary { printed: conditions.len() as u64, malformed: 0 });
    }
    print_table(out, &HEADERS, |visit| {
        for condition in &conditions {
            visit(vec![
                escape_bytes(condition.kind.as_bytes()),
                (if condition.status { "True" } else { "False" }).to_owned(),
                escape_bytes(condition.reason.as_bytes()),
                human_duration(now.unix_nanos().saturating_sub(condition.last_transition.0)),
                escape_bytes(condition.message.as_bytes()),
            ])?;
        }
        Ok(conditions.len() as u64)
    })
}
