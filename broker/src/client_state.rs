//! Per-connection state a client builds up beyond the protocol loop: destinations resolved for
//! it (creation cap and `admin` right applied), and its open transactions with what they buffer,
//! all counted against its quotas (see [`crate::quota`]).
//!
//! Invariants: a [`Transactions`] charges every buffered SEND to the connection's
//! [`ConnQuota`] (and so to the broker's memory budget) and gives the charge back when the
//! transaction ends (COMMIT, ABORT) or the connection does (the quota's `Drop`). A refusal leaves
//! the transaction as it was; the connection closes with an ERROR, which discards it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::broker::Broker;
use crate::destination::{Queue, Topic};
use crate::directory::Refused;
use crate::quota::{ConnQuota, Quota, QuotaError};
use crate::store::ProducerSeq;

/// A refused request: the ERROR frame's `message` header and body.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub message: String,
    pub detail: String,
}

impl From<QuotaError> for Refusal {
    fn from(e: QuotaError) -> Self {
        Refusal {
            message: format!("quota exceeded: {}", e.quota.key()),
            detail: e.to_string(),
        }
    }
}

/// A destination resolved once: what a subscription reads from, or where a SEND goes.
pub(crate) enum SubTarget {
    Queue(Arc<Queue>),
    Topic(Arc<Topic>),
}

impl SubTarget {
    /// The destination's name (shared with the messages sent to it).
    pub fn name(&self) -> Arc<str> {
        match self {
            SubTarget::Queue(q) => q.name.clone(),
            SubTarget::Topic(t) => t.name.clone(),
        }
    }
}

/// Looks up `destination` for a client, creating it only when `may_create` (the client holds the
/// `admin` right or no authorization is configured) and the broker holds fewer than
/// `quotas.max_destinations`.
pub(crate) fn resolve(
    broker: &Broker,
    user: &str,
    destination: &str,
    is_queue: bool,
    may_create: bool,
) -> Result<SubTarget, Refusal> {
    let found = if is_queue {
        broker
            .client_queue(destination, may_create)
            .map(SubTarget::Queue)
    } else {
        broker
            .client_topic(destination, may_create)
            .map(SubTarget::Topic)
    };
    found.map_err(|r| match r {
        // It existed when the rights were checked and was removed as idle since.
        Refused::NotFound => Refusal {
            message: "not authorized".into(),
            detail: format!("user {user:?} lacks the admin right on {destination}"),
        },
        Refused::Full { max } => broker
            .quotas
            .refuse(
                Quota::Destinations,
                format!("the broker holds {max} destinations; {destination} is not created"),
            )
            .into(),
    })
}

/// A SEND, parsed and resolved, waiting for its transaction's COMMIT (or sent at once).
pub(crate) struct PendingSend {
    pub target: SubTarget,
    pub is_queue: bool,
    pub persistent: bool,
    pub priority: u8,
    pub expires: u64,
    pub producer: Option<ProducerSeq>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl PendingSend {
    /// Bytes it holds while buffered (body, headers and a per-header overhead).
    pub fn buffered_bytes(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + 160) as u64
    }
}

/// One open transaction.
#[derive(Default)]
pub(crate) struct Transaction {
    pub sends: Vec<PendingSend>,
    /// (subscription key, delivery tags) acknowledged inside the transaction.
    pub acks: Vec<(u64, Vec<u64>)>,
    /// Bytes of `sends` charged to the quota.
    bytes: u64,
}

/// A connection's open transactions and its quota.
pub(crate) struct Transactions {
    open: HashMap<String, Transaction>,
    /// What the connection holds, counted (subscriptions too).
    pub quota: ConnQuota,
}

impl Transactions {
    pub fn new(quota: ConnQuota) -> Self {
        Transactions {
            open: HashMap::new(),
            quota,
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.open.contains_key(id)
    }

    /// BEGIN. `Ok(false)`: already open.
    pub fn begin(&mut self, id: &str) -> Result<bool, Refusal> {
        if self.open.contains_key(id) {
            return Ok(false);
        }
        self.quota.begin()?;
        self.open.insert(id.to_owned(), Transaction::default());
        Ok(true)
    }

    /// Ends a transaction (COMMIT takes it to carry it out, ABORT drops it) and gives its
    /// charge back. None when it is not open.
    pub fn end(&mut self, id: &str) -> Option<Transaction> {
        let t = self.open.remove(id)?;
        self.quota.end(t.bytes);
        Some(t)
    }

    /// Buffers a SEND in open transaction `id` (which the caller checked exists).
    pub fn buffer_send(&mut self, id: &str, send: PendingSend) -> Result<(), Refusal> {
        let Some(t) = self.open.get_mut(id) else {
            return Ok(());
        };
        let n = send.buffered_bytes();
        self.quota.buffer(n)?;
        t.bytes += n;
        t.sends.push(send);
        Ok(())
    }

    /// Records an ACK inside open transaction `id`.
    pub fn buffer_ack(&mut self, id: &str, sub_key: u64, tags: Vec<u64>) {
        if let Some(t) = self.open.get_mut(id) {
            t.acks.push((sub_key, tags));
        }
    }

    /// Drops every open transaction (the connection ended); returns how many there were.
    pub fn clear(&mut self) -> usize {
        let ids: Vec<String> = self.open.keys().cloned().collect();
        for id in &ids {
            self.end(id);
        }
        ids.len()
    }
}
