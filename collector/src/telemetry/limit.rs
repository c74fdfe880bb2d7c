//! Warnings that can repeat once per record (an API write refused, a journal error, a webhook
//! failing) are rate-limited: the first few in each window are logged, the rest counted and
//! reported with the next one that is logged, so a storm cannot flood the log or hide how many.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Warnings logged per window before the rest are suppressed.
pub const BURST: u32 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One kind of repeating warning.
#[derive(Debug)]
pub struct WarnLimit {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Default for WarnLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl WarnLimit {
    /// [`BURST`] per [`WINDOW`].
    pub const fn new() -> Self {
        Self { state: Mutex::new(State { window_start: None, logged: 0, suppressed: 0 }) }
    }

    /// Whether to log this warning now: `Some("")`, or `Some(" (N similar warnings
    /// suppressed)")` to append when some were held back since the last one logged; `None` to
    /// hold it back.
    pub fn allow(&self) -> Option<String> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.window_start.is_none_or(|start| now.duration_since(start) >= WINDOW) {
            state.window_start = Some(now);
            state.logged = 0;
        }
        if state.logged >= BURST {
            state.suppressed += 1;
            return None;
        }
        state.logged += 1;
        let suppressed = std::mem::take(&mut state.suppressed);
        Some(if suppressed == 0 { String::new() } else { format!(" ({suppressed} similar warnings suppressed)") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_the_rest_counted_and_reported_in_the_next_window() {
        let limit = WarnLimit::new();
        let t0 = Instant::now();
        let first: Vec<Option<String>> = (0..8).map(|_| limit.allow_at(t0)).collect();
        assert_eq!(first.iter().filter(|allowed| allowed.is_some()).count(), 5);
        assert!(first[..5].iter().all(|allowed| allowed.as_deref() == Some("")));
        assert!(first[5..].iter().all(Option::is_none));
        assert_eq!(limit.allow_at(t0 + WINDOW).as_deref(), Some(" (3 similar warnings suppressed)"));
        assert_eq!(limit.allow_at(t0 + WINDOW).as_deref(), Some(""));
    }
}
