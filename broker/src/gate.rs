//! The serving gate: whether this broker may acknowledge anything right now.
//!
//! A standalone broker's gate is always open. In a fabric the HA lifecycle closes it the moment the
//! ZooKeeper connection is suspended, and opens it again only once ZooKeeper confirmed that this
//! broker still holds its member node and epoch. While it is closed, connections send nothing at
//! all (no RECEIPT, no MESSAGE, no ERROR) and read nothing: their state stays warm for a quick
//! resume, and a master that may have lost its session acknowledges nothing.
//!
//! The gate also closes by itself when its heart stops: the HA lifecycle ticks it every few tens of
//! milliseconds, and a gate whose last tick is older than `max_silence` reads as closed. A process
//! that was paused (SIGSTOP, a long GC-like stall, a VM freeze) therefore wakes up with a closed
//! gate, before any connection task can write, and stays closed until the lifecycle has checked
//! with ZooKeeper.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// See the module documentation.
#[derive(Debug)]
pub struct Gate {
    open: watch::Sender<bool>,
    origin: Instant,
    /// Milliseconds since `origin` of the last tick.
    last_tick_ms: AtomicU64,
    /// Longest silence before the gate reads as closed; `None` = no heart (standalone).
    max_silence: Option<Duration>,
}

impl Gate {
    /// A gate that is always open (standalone broker).
    pub fn always_open() -> Self {
        let (open, _) = watch::channel(true);
        Gate {
            open,
            origin: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            max_silence: None,
        }
    }

    /// A closed gate with a heart: it reads as closed when not ticked for `max_silence`.
    pub fn with_heart(max_silence: Duration) -> Self {
        let (open, _) = watch::channel(false);
        Gate {
            open,
            origin: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            max_silence: Some(max_silence),
        }
    }

    /// Records that the lifecycle is alive. Returns how long it had been since the previous tick.
    pub fn tick(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        let prev = self.last_tick_ms.swap(now, Ordering::AcqRel);
        Duration::from_millis(now.saturating_sub(prev))
    }

    /// Opens the gate (serving) and ticks it.
    pub fn open(&self) {
        self.tick();
        self.open.send_replace(true);
    }

    /// Closes the gate.
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Whether acknowledging is allowed now.
    pub fn is_open(&self) -> bool {
        if !*self.open.borrow() {
            return false;
        }
        match self.max_silence {
            None => true,
            Some(max) => {
                let now = self.origin.elapsed().as_millis() as u64;
                let last = self.last_tick_ms.load(Ordering::Acquire);
                now.saturating_sub(last) <= max.as_millis() as u64
            }
        }
    }

    /// Waits until the gate is open.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn opened(&self) {
        let mut rx = self.open.subscribe();
        loop {
            if self.is_open() {
                return;
            }
            if *rx.borrow_and_update() {
                // Open but silent: the lifecycle will tick or close it; check again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_gate_is_always_open() {
        let g = Gate::always_open();
        assert!(g.is_open());
    }

    #[tokio::test]
    async fn a_silent_heart_closes_the_gate() {
        let g = Gate::with_heart(Duration::from_millis(30));
        assert!(!g.is_open());
        g.open();
        assert!(g.is_open());
        // Stop ticking: the gate reads closed once the silence exceeds the limit.
        let start = Instant::now();
        while g.is_open() {
            assert!(start.elapsed() < Duration::from_secs(2), "never closed");
            std::thread::sleep(Duration::from_millis(5));
        }
        g.tick();
        assert!(g.is_open());
        g.close();
        assert!(!g.is_open());
    }

    #[tokio::test]
    async fn opened_wakes_when_the_gate_opens() {
        let g = std::sync::Arc::new(Gate::with_heart(Duration::from_secs(5)));
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.opened().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        g.open();
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
