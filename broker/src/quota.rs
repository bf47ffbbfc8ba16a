//! Quotas: how much one client may make the broker hold (`[quotas]`).
//!
//! [`QuotaState`] is shared by the broker (per-user subscription counts, refusal counters);
//! each connection owns a [`ConnQuota`] that counts what it holds: subscriptions, open
//! transactions and the bytes buffered in them. A refused request is a [`QuotaError`] that names
//! the configuration key; the connection turns it into an ERROR frame and closes (open
//! transactions are then discarded: nothing of them was stored).
//!
//! Invariants: a [`ConnQuota`] gives back everything it counted when it is dropped (per-user
//! subscriptions, transaction bytes in the memory budget), so a connection that ends in any way
//! leaves no charge behind; a user's entry disappears when its count is back to 0, so the
//! per-user map holds only users that hold subscriptions now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Quotas;
use crate::memory::MemoryBudget;

/// A quota a request can exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// `quotas.max_subscriptions_per_connection`.
    SubscriptionsPerConnection,
    /// `quotas.max_subscriptions_per_user`.
    SubscriptionsPerUser,
    /// `quotas.max_transactions_per_connection`.
    TransactionsPerConnection,
    /// `quotas.max_transaction_bytes`.
    TransactionBytes,
    /// `limits.max_memory`, for bytes buffered in transactions broker-wide.
    TransactionMemory,
    /// `quotas.max_header_bytes`.
    HeaderBytes,
    /// `quotas.max_destinations`.
    Destinations,
}

impl Quota {
    /// Every quota, in the order of [`QuotaState::refusals`].
    pub const ALL: [Quota; 7] = [
        Quota::SubscriptionsPerConnection,
        Quota::SubscriptionsPerUser,
        Quota::TransactionsPerConnection,
        Quota::TransactionBytes,
        Quota::TransactionMemory,
        Quota::HeaderBytes,
        Quota::Destinations,
    ];

    /// The configuration key.
    pub fn key(self) -> &'static str {
        match self {
            Quota::SubscriptionsPerConnection => "quotas.max_subscriptions_per_connection",
            Quota::SubscriptionsPerUser => "quotas.max_subscriptions_per_user",
            Quota::TransactionsPerConnection => "quotas.max_transactions_per_connection",
            Quota::TransactionBytes => "quotas.max_transaction_bytes",
            Quota::TransactionMemory => "limits.max_memory",
            Quota::HeaderBytes => "quotas.max_header_bytes",
            Quota::Destinations => "quotas.max_destinations",
        }
    }

    fn index(self) -> usize {
        Quota::ALL.iter().position(|q| *q == self).unwrap_or(0)
    }
}

/// A request refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} exceeded: {detail}", quota.key())]
pub struct QuotaError {
    /// Which quota.
    pub quota: Quota,
    /// What was asked and what the limit is.
    pub detail: String,
}

/// Shared quota state (one per broker).
pub struct QuotaState {
    /// The configured quotas.
    pub config: Quotas,
    memory: Arc<MemoryBudget>,
    user_subs: Mutex<HashMap<String, usize>>,
    refusals: [AtomicU64; 7],
}

impl QuotaState {
    /// The state for `config`, charging transaction bytes to `memory`.
    pub fn new(config: Quotas, memory: Arc<MemoryBudget>) -> Self {
        QuotaState {
            config,
            memory,
            user_subs: Mutex::new(HashMap::new()),
            refusals: Default::default(),
        }
    }

    /// Refusals so far, per quota (same order as [`Quota::ALL`]).
    pub fn refusals(&self) -> Vec<(Quota, u64)> {
        Quota::ALL
            .iter()
            .map(|q| (*q, self.refusals[q.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// Counts a refusal and builds its error.
    pub fn refuse(&self, quota: Quota, detail: String) -> QuotaError {
        self.refusals[quota.index()].fetch_add(1, Ordering::Relaxed);
        QuotaError { quota, detail }
    }

    /// Users holding subscriptions now.
    pub fn users_with_subscriptions(&self) -> usize {
        self.user_subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Bytes buffered in open transactions, all connections.
    pub fn transaction_bytes(&self) -> u64 {
        self.memory.transactions()
    }
}

/// What one connection holds, counted against the quotas (see the module documentation).
pub struct ConnQuota {
    state: Arc<QuotaState>,
    user: Option<String>,
    subscriptions: usize,
    transactions: usize,
    transaction_bytes: u64,
}

impl ConnQuota {
    /// Nothing held yet.
    pub fn new(state: Arc<QuotaState>) -> Self {
        ConnQuota {
            state,
            user: None,
            subscriptions: 0,
            transactions: 0,
            transaction_bytes: 0,
        }
    }

    /// The authenticated user the per-user quotas count against (set once, at CONNECT).
    pub fn set_user(&mut self, user: &str) {
        if self.user.is_none() {
            self.user = Some(user.to_owned());
        }
    }

    /// Counts one more subscription.
    pub fn add_subscription(&mut self) -> Result<(), QuotaError> {
        let max = self.state.config.max_subscriptions_per_connection;
        if self.subscriptions >= max {
            return Err(self.state.refuse(
                Quota::SubscriptionsPerConnection,
                format!("this connection holds {max} subscriptions already"),
            ));
        }
        if let Some(user) = &self.user {
            let max = self.state.config.max_subscriptions_per_user;
            let mut map = self
                .state
                .user_subs
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = map.entry(user.clone()).or_insert(0);
            if *n >= max {
                drop(map);
                return Err(self.state.refuse(
                    Quota::SubscriptionsPerUser,
                    format!("user {user:?} holds {max} subscriptions already"),
                ));
            }
            *n += 1;
        }
        self.subscriptions += 1;
        Ok(())
    }

    /// One subscription fewer.
    pub fn remove_subscription(&mut self) {
        if self.subscriptions == 0 {
            return;
        }
        self.subscriptions -= 1;
        self.release_user_subscriptions(1);
    }

    fn release_user_subscriptions(&self, n: usize) {
        let Some(user) = &self.user else { return };
        let mut map = self
            .state
            .user_subs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(user) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                map.remove(user);
            }
        }
    }

    /// Subscriptions this connection holds.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    /// Counts a BEGIN.
    pub fn begin(&mut self) -> Result<(), QuotaError> {
        let max = self.state.config.max_transactions_per_connection;
        if self.transactions >= max {
            return Err(self.state.refuse(
                Quota::TransactionsPerConnection,
                format!("this connection has {max} transactions open already"),
            ));
        }
        self.transactions += 1;
        Ok(())
    }

    /// A transaction ended (COMMIT or ABORT) that buffered `bytes`: gives them back.
    pub fn end(&mut self, bytes: u64) {
        self.transactions = self.transactions.saturating_sub(1);
        let bytes = bytes.min(self.transaction_bytes);
        self.transaction_bytes -= bytes;
        self.state.memory.release_transaction(bytes);
    }

    /// Counts `bytes` of a SEND buffered in a transaction: against this connection's
    /// `quotas.max_transaction_bytes` and, broker-wide, `limits.max_memory`.
    pub fn buffer(&mut self, bytes: u64) -> Result<(), QuotaError> {
        let max = self.state.config.max_transaction_bytes.0;
        if self.transaction_bytes + bytes > max {
            return Err(self.state.refuse(
                Quota::TransactionBytes,
                format!(
                    "this connection's open transactions buffer {} bytes; {bytes} more would pass {max}",
                    self.transaction_bytes
                ),
            ));
        }
        if !self.state.memory.try_charge_transaction(bytes) {
            return Err(self.state.refuse(
                Quota::TransactionMemory,
                format!(
                    "open transactions of all connections buffer {} bytes; {bytes} more would pass {}",
                    self.state.memory.transactions(),
                    self.state.memory.limit()
                ),
            ));
        }
        self.transaction_bytes += bytes;
        Ok(())
    }

    /// Checks the header bytes (names plus values) of a SEND against `quotas.max_header_bytes`.
    pub fn check_headers<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), QuotaError> {
        let max = self.state.config.max_header_bytes.0;
        let total: u64 = headers
            .into_iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        if total > max {
            return Err(self.state.refuse(
                Quota::HeaderBytes,
                format!("the frame's headers hold {total} bytes; at most {max} are accepted"),
            ));
        }
        Ok(())
    }
}

impl Drop for ConnQuota {
    fn drop(&mut self) {
        self.release_user_subscriptions(self.subscriptions);
        self.state
            .memory
            .release_transaction(self.transaction_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn state(limit: u64) -> Arc<QuotaState> {
        let q = Quotas {
            max_subscriptions_per_connection: 2,
            max_subscriptions_per_user: 3,
            max_transactions_per_connection: 1,
            max_transaction_bytes: ByteSize(100),
            ..Quotas::default()
        };
        Arc::new(QuotaState::new(q, Arc::new(MemoryBudget::new(limit))))
    }

    #[test]
    fn subscriptions_per_connection_and_per_user_are_released_on_drop() {
        let s = state(1000);
        let mut a = ConnQuota::new(s.clone());
        a.set_user("eve");
        a.add_subscription().unwrap();
        a.add_subscription().unwrap();
        let e = a.add_subscription().unwrap_err();
        assert_eq!(e.quota, Quota::SubscriptionsPerConnection);
        assert!(e
            .to_string()
            .contains("quotas.max_subscriptions_per_connection"));
        let mut b = ConnQuota::new(s.clone());
        b.set_user("eve");
        b.add_subscription().unwrap();
        let e = b.add_subscription().unwrap_err();
        assert_eq!(e.quota, Quota::SubscriptionsPerUser);
        drop(a);
        b.add_subscription().unwrap();
        drop(b);
        assert_eq!(s.users_with_subscriptions(), 0);
    }

    #[test]
    fn transaction_bytes_are_capped_per_connection_and_broker_wide() {
        let s = state(150);
        let mut a = ConnQuota::new(s.clone());
        a.begin().unwrap();
        assert_eq!(
            a.begin().unwrap_err().quota,
            Quota::TransactionsPerConnection
        );
        a.buffer(90).unwrap();
        assert_eq!(a.buffer(20).unwrap_err().quota, Quota::TransactionBytes);
        let mut b = ConnQuota::new(s.clone());
        b.begin().unwrap();
        let e = b.buffer(80).unwrap_err();
        assert_eq!(e.quota, Quota::TransactionMemory);
        assert!(e.to_string().contains("limits.max_memory"), "{e}");
        assert_eq!(s.transaction_bytes(), 90);
        a.end(90);
        b.buffer(80).unwrap();
        drop(b);
        assert_eq!(s.transaction_bytes(), 0);
    }
}
