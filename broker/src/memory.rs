//! Memory accounting against `limits.max_memory`.
//!
//! [`MemoryBudget`] counts, in one `used` figure, everything clients make the broker hold in
//! memory that grows with their traffic:
//! - bodies of queue messages held in memory (reserved with [`MemoryBudget::try_reserve`]: past
//!   the limit a body lives on disk only, see `Broker::admit`);
//! - headers of queue messages whose body is on disk ([`MemoryBudget::charge_spilled`]): they
//!   stay in memory with the message, so they count too, and once they alone exceed the limit
//!   producers of messages with more than [`SMALL_HEADERS`] of headers wait
//!   ([`MemoryBudget::producers_must_wait`]) until consumers bring them down. Producers of
//!   ordinary messages are not paused: one client's heavy headers must not stop everybody, and
//!   small headers are per-message bookkeeping like the message's own;
//! - SENDs buffered in open transactions ([`MemoryBudget::try_charge_transaction`]): all
//!   connections together may buffer at most the limit; past it a transactional SEND is refused.
//!
//! Invariants: every charge is given back exactly once, with the same kind and size (a queue
//! message's body is never put back in memory once dropped, so its kind is fixed at admission);
//! `used` is the sum of the three kinds.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Header bytes (names, values and per-header bookkeeping, as [`crate::message::Message::header_bytes`]
/// counts them) up to which a SEND is never paused for header memory.
pub const SMALL_HEADERS: u64 = 1024;

/// Bytes held in memory for clients, against a limit (see the module documentation).
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicU64,
    spilled: AtomicU64,
    transactions: AtomicU64,
    limit: u64,
    /// Woken when the spilled headers drop back to the limit.
    below: Notify,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        MemoryBudget {
            used: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            limit,
            below: Notify::new(),
        }
    }

    /// Takes `n` bytes for a body held in memory if they fit.
    pub fn try_reserve(&self, n: u64) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur + n > self.limit && cur > 0 {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back `n` bytes taken with [`MemoryBudget::try_reserve`].
    pub fn release(&self, n: u64) {
        let prev = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "memory budget underflow");
    }

    /// Counts the `n` header bytes of a queue message whose body is on disk (always succeeds:
    /// the message is already stored; [`MemoryBudget::producers_must_wait`] applies the limit).
    pub fn charge_spilled(&self, n: u64) {
        if n > 0 {
            self.used.fetch_add(n, Ordering::AcqRel);
            self.spilled.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Gives back a [`MemoryBudget::charge_spilled`].
    pub fn release_spilled(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.release(n);
        let prev = self.spilled.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "spilled accounting underflow");
        if prev > self.limit && prev - n <= self.limit {
            self.below.notify_waiters();
        }
    }

    /// Takes `n` bytes for a SEND buffered in a transaction, unless transactions already hold
    /// the limit (then false: the caller refuses the SEND).
    pub fn try_charge_transaction(&self, n: u64) -> bool {
        let mut cur = self.transactions.load(Ordering::Relaxed);
        loop {
            if cur + n > self.limit {
                return false;
            }
            match self.transactions.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.used.fetch_add(n, Ordering::AcqRel);
        true
    }

    /// Gives back a [`MemoryBudget::try_charge_transaction`].
    pub fn release_transaction(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.release(n);
        let prev = self.transactions.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "transaction accounting underflow");
    }

    /// Bytes in use (bodies in memory, headers of spilled messages, transaction buffers).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Header bytes of queue messages whose body is on disk.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    /// Bytes buffered in open transactions.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// The limit (`limits.max_memory`).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether a producer that just sent a message with `header_bytes` of headers should stop
    /// being read: the headers of messages whose bodies are on disk alone exceed the limit, and
    /// its own are more than [`SMALL_HEADERS`].
    pub fn producer_must_wait(&self, header_bytes: u64) -> bool {
        header_bytes > SMALL_HEADERS && self.producers_must_wait()
    }

    /// Whether the headers of messages whose bodies are on disk alone exceed the limit.
    pub fn producers_must_wait(&self) -> bool {
        self.spilled() > self.limit
    }

    /// Resolves once [`MemoryBudget::producers_must_wait`] is false.
    pub async fn wait_for_room(&self) {
        loop {
            let woken = self.below.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.producers_must_wait() {
                return;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_add_up_and_transactions_are_capped() {
        let m = MemoryBudget::new(1000);
        assert!(m.try_reserve(600));
        m.charge_spilled(700);
        assert!(!m.producers_must_wait());
        m.charge_spilled(400);
        assert!(m.producers_must_wait());
        assert!(!m.try_reserve(10), "past the limit bodies spill");
        assert!(m.try_charge_transaction(1000));
        assert!(!m.try_charge_transaction(1));
        assert_eq!(m.used(), 600 + 1100 + 1000);
        m.release_spilled(400);
        assert!(!m.producers_must_wait());
        m.release_spilled(700);
        m.release_transaction(1000);
        m.release(600);
        assert_eq!((m.used(), m.spilled(), m.transactions()), (0, 0, 0));
    }
}
