//! A rate limit for log lines a client can provoke (failed logins): at most `per_second` lines in
//! each one-second window; the first line of a later window reports how many were suppressed.
//!
//! Invariant: the log grows by at most `per_second + 1` lines per second from this source,
//! whatever the clients do.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::stats::AuthStats;

#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
}

/// Decides whether a log line may be written now.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    stats: Arc<AuthStats>,
    window: Mutex<Window>,
}

/// What the caller may log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the line; `suppressed` lines were dropped in the previous window(s) (say so).
    Write {
        /// Lines dropped since the last line written.
        suppressed: u64,
    },
    /// Drop the line.
    Drop,
}

impl LogLimit {
    /// At most `per_second` lines per second (0: none).
    pub fn new(per_second: u32, stats: Arc<AuthStats>) -> LogLimit {
        LogLimit {
            per_second,
            stats,
            window: Mutex::new(Window {
                start: Instant::now(),
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// Counts one line and says whether to write it.
    pub fn check(&self) -> Verdict {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(w.start) >= Duration::from_secs(1) {
            w.start = now;
            w.written = 0;
        }
        if w.written < self.per_second {
            w.written += 1;
            let suppressed = std::mem::take(&mut w.suppressed);
            return Verdict::Write { suppressed };
        }
        w.suppressed += 1;
        self.stats
            .log_lines_suppressed
            .fetch_add(1, Ordering::Relaxed);
        Verdict::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_n_per_window_then_a_summary() {
        let l = LogLimit::new(3, Arc::new(AuthStats::default()));
        let written = (0..1000)
            .filter(|_| matches!(l.check(), Verdict::Write { .. }))
            .count();
        // One window, or two if the loop straddled a second boundary.
        assert!((3..=6).contains(&written), "{written}");
        let mut w = l.window.lock().unwrap();
        w.start -= Duration::from_secs(2);
        drop(w);
        match l.check() {
            Verdict::Write { suppressed } => assert!(suppressed >= 994, "{suppressed}"),
            Verdict::Drop => panic!("a new window writes"),
        }
    }
}
