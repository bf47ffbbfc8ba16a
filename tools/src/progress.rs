//! Optional progress display on stderr (indicatif).
//!
//! Workers only bump shared atomic counters; a background task samples them a few times per second
//! and draws the bar. The bar appears only after [`SHOW_AFTER`] (short runs stay quiet), only when
//! stderr is a terminal, and never with `--json`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Runs shorter than this show no progress at all.
pub const SHOW_AFTER: Duration = Duration::from_secs(2);
const REFRESH: Duration = Duration::from_millis(200);

/// A named shared counter displayed by the progress bar.
pub type Counter = (&'static str, Arc<AtomicU64>);

/// Whether a progress display may be shown: stderr is a terminal and the output is not JSON.
pub fn wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// Handle of the progress task; call [`Progress::finish`] to clear the bar.
#[derive(Debug)]
pub struct Progress {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// A progress display that shows nothing.
    pub fn disabled() -> Progress {
        Progress {
            stop: None,
            task: None,
        }
    }

    /// Starts the display if `enabled`. The bar position is the first counter; all counters are
    /// shown as text. `total` sets the bar length (a spinner when `None`).
    pub fn start(
        enabled: bool,
        label: impl Into<String>,
        total: Option<u64>,
        counters: Vec<Counter>,
    ) -> Progress {
        if !enabled || counters.is_empty() {
            return Progress::disabled();
        }
        let label = label.into();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = &mut stop_rx => return,
                _ = tokio::time::sleep(SHOW_AFTER) => {}
            }
            let bar = match total {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template(
                        "{prefix} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{prefix} [{elapsed_precise}] {spinner} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            let bar = bar.with_elapsed(SHOW_AFTER);
            bar.set_prefix(label);
            let mut tick = tokio::time::interval(REFRESH);
            let mut last = 0u64;
            let mut last_at = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tick.tick() => {}
                }
                let values: Vec<u64> = counters
                    .iter()
                    .map(|(_, c)| c.load(Ordering::Relaxed))
                    .collect();
                let now = tokio::time::Instant::now();
                let dt = now.duration_since(last_at).as_secs_f64();
                let rate = if dt > 0.0 {
                    values[0].saturating_sub(last) as f64 / dt
                } else {
                    0.0
                };
                (last, last_at) = (values[0], now);
                let text = counters
                    .iter()
                    .zip(&values)
                    .map(|((name, _), v)| format!("{name} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                bar.set_position(values[0]);
                bar.set_message(format!("{text} ({rate:.0}/s)"));
            }
            bar.finish_and_clear();
        });
        Progress {
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Stops the display and clears the bar.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_progress_finishes_immediately() {
        let c = Arc::new(AtomicU64::new(0));
        Progress::start(false, "x", Some(10), vec![("sent", c)])
            .finish()
            .await;
        Progress::disabled().finish().await;
    }

    #[tokio::test]
    async fn short_runs_draw_nothing_and_stop_promptly() {
        let c = Arc::new(AtomicU64::new(5));
        let started = std::time::Instant::now();
        let p = Progress::start(true, "x", None, vec![("sent", c)]);
        p.finish().await;
        assert!(started.elapsed() < SHOW_AFTER);
    }
}
