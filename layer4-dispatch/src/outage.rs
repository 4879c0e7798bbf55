//! Logging a condition that lasts (a broker away, receipts overdue) by its changes, not by its
//! occurrences: one WARN when it starts, a summary with counts at most every
//! [`SUMMARY_EVERY`] while it lasts, one INFO when it ends. Per-message detail stays at DEBUG.
//! During a broker outage the publisher retries every row every two seconds; a line per row
//! per retry buried everything else in the log (6,670 lines in two 9-second outages).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a lasting condition is summarised.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// One condition's state. `const`-constructible, so a condition shared by every copy of a stage
/// in the process can be a `static`.
pub struct Outage {
    what: &'static str,
    state: Mutex<State>,
}

struct State {
    since: Option<Instant>,
    last_summary: Option<Instant>,
    /// Occurrences since the last line.
    pending: u64,
    /// Occurrences since the condition began.
    total: u64,
}

impl Outage {
    /// A condition named `what` ("broker unreachable", ...), not in force.
    pub const fn new(what: &'static str) -> Self {
        Self { what, state: Mutex::new(State { since: None, last_summary: None, pending: 0, total: 0 }) }
    }

    /// `n` more occurrences, with the latest error.
    pub fn occurred(&self, n: u64, error: &dyn std::fmt::Display) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.pending += n;
        s.total += n;
        match (s.since, s.last_summary) {
            (None, _) => {
                s.since = Some(now);
                s.last_summary = Some(now);
                tracing::warn!(condition = self.what, count = s.pending, error = %error, "{} began", self.what);
                s.pending = 0;
            }
            (Some(since), Some(last)) if now.duration_since(last) >= SUMMARY_EVERY => {
                s.last_summary = Some(now);
                tracing::warn!(
                    condition = self.what,
                    count = s.pending,
                    total = s.total,
                    lasting_secs = now.duration_since(since).as_secs(),
                    error = %error,
                    "{} continues", self.what
                );
                s.pending = 0;
            }
            _ => {}
        }
    }

    /// The condition is over (a no-op if it was not in force).
    pub fn cleared(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = s.since.take() {
            tracing::info!(
                condition = self.what,
                total = s.total,
                lasted_secs = since.elapsed().as_secs(),
                "{} ended",
                self.what
            );
            s.last_summary = None;
            s.pending = 0;
            s.total = 0;
        }
    }

    #[cfg(test)]
    fn active(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begins_once_and_ends_once() {
        let o = Outage::new("test condition");
        assert!(!o.active());
        o.occurred(3, &"refused");
        o.occurred(5, &"refused");
        assert!(o.active());
        {
            let s = o.state.lock().unwrap_or_else(|p| p.into_inner());
            assert_eq!((s.total, s.pending), (8, 5), "the second occurrence waits for the summary");
        }
        o.cleared();
        assert!(!o.active());
        o.occurred(0, &"nothing");
        assert!(!o.active(), "zero occurrences start nothing");
    }
}
