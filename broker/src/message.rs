//! The broker's in-memory message and the delivery that carries it to a connection.
//!
//! A [`Message`] is immutable once accepted and shared (`Arc`) between a queue, the consumers it
//! is delivered to and, for topics, every subscriber. Its body is either in memory or, for
//! persistent messages beyond the body cache, only in the journal (read back when delivered).

use std::sync::Arc;

use bytes::Bytes;

use crate::destination::Queue;
use crate::store::{ProducerSeq, StoredMessage};

/// JMS/ActiveMQ default priority for messages that do not say.
pub const DEFAULT_PRIORITY: u8 = 4;

/// One accepted message.
#[derive(Debug)]
pub struct Message {
    /// Broker-assigned id, unique across the journal's life (persistent and not).
    pub id: u64,
    /// STOMP destination name (`/queue/x` or `/topic/x`).
    pub destination: Arc<str>,
    /// Whether it is journaled.
    pub persistent: bool,
    /// 0-9, higher first.
    pub priority: u8,
    /// Expiry, ms since the Unix epoch; 0 = never.
    pub expires: u64,
    /// Broker receive time, ms since the Unix epoch.
    pub timestamp: u64,
    /// Producer id and sequence for de-duplication, if the producer sent them.
    pub producer: Option<ProducerSeq>,
    /// Application headers, delivered as sent.
    pub headers: Vec<(String, String)>,
    /// The body when held in memory; `None` when only the journal has it.
    pub body: Option<Bytes>,
    /// Body length in bytes.
    pub body_len: u32,
}

impl Message {
    /// The `message-id` header value. Stable across restarts and failover (derived from the
    /// journal id), so clients can recognise a redelivery.
    pub fn message_id(&self) -> String {
        format!("ID:fabricmq-{}", self.id)
    }

    /// Whether the message has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires != 0 && self.expires <= now_ms
    }

    /// Bytes this message holds in memory (body plus an estimate of headers).
    pub fn memory_bytes(&self) -> u64 {
        let body = self.body.as_ref().map_or(0, |b| b.len()) as u64;
        body + self.header_bytes() + 160
    }

    /// Bytes its application headers hold in memory (names, values and per-header
    /// bookkeeping): what stays in memory when the body lives on disk only.
    pub fn header_bytes(&self) -> u64 {
        self.headers
            .iter()
            .map(|(k, v)| (k.len() + v.len() + 32) as u64)
            .sum()
    }

    /// Bytes one delivery of this message stands for while it waits in a connection's outbox:
    /// the body (read from its store before encoding when it is not in memory) plus the
    /// bookkeeping, so that messages with tiny or empty bodies still count towards a slow
    /// consumer's limit (an empty message queued for a subscriber costs a few hundred bytes).
    pub fn outbox_bytes(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 32)
            .sum();
        u64::from(self.body_len) + headers as u64 + 160
    }

    /// The journal form (body included).
    pub fn to_stored(&self) -> StoredMessage {
        StoredMessage {
            id: self.id,
            destination: self.destination.to_string(),
            priority: self.priority,
            expires: self.expires,
            timestamp: self.timestamp,
            producer: self.producer.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
            body_len: self.body_len,
        }
    }

    /// Rebuilds a message from its journal form.
    pub fn from_stored(s: StoredMessage) -> Message {
        Message {
            id: s.id,
            destination: s.destination.into(),
            persistent: true,
            priority: s.priority,
            expires: s.expires,
            timestamp: s.timestamp,
            producer: s.producer,
            headers: s.headers,
            body: s.body,
            body_len: s.body_len,
        }
    }
}

/// Where a delivery came from, so the connection can settle it.
#[derive(Clone)]
pub enum Source {
    /// A queue: acks and nacks go back to it.
    Queue(Arc<Queue>),
    /// A topic: nothing to settle (subscriptions are not durable).
    Topic,
}

/// A message handed to one subscription of one connection.
pub struct Delivery {
    /// The connection-local subscription key.
    pub sub_key: u64,
    /// Origin.
    pub source: Source,
    /// The message.
    pub msg: Arc<Message>,
    /// How many times it has been delivered, this one included (1 = first delivery).
    pub delivery_count: u32,
}

/// What other tasks send to a connection.
pub enum Outbound {
    /// Deliver a message.
    Deliver(Delivery),
    /// Send an ERROR with this message and close (e.g. a topic subscriber too slow to keep up).
    Close(String),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
