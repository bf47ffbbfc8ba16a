//! Queues and topics: message ordering, consumers, dispatch and settlement.
//!
//! A [`Queue`] owns its ready messages (by priority, then arrival), the messages in flight to a
//! consumer, and its consumers. All of it sits behind one short `std` mutex per queue, never held
//! across an `.await`; dispatch runs inline in whichever task changes the queue (a SEND, an ACK, a
//! new consumer) and hands deliveries to connection tasks through their unbounded outboxes. The
//! outbox cannot grow without bound: a queue sends a consumer at most its prefetch window of
//! unacknowledged messages.
//!
//! Invariants:
//! - a message is in exactly one place: `ready`, `inflight` (owned by one consumer), or gone;
//! - `consumer.inflight` equals the number of `inflight` entries owned by that consumer;
//! - journal acks are written for persistent messages only, and exactly once per message.
//!
//! Work that needs another destination (dead-lettering) is returned to the caller as
//! [`Effects`] rather than done under this queue's lock, so no two queue locks are ever held.
//!
//! A [`Topic`] fans a message out to every current subscriber; subscriptions are not durable and
//! topic messages are never journaled. A subscriber whose connection has more than its pending
//! limit queued is disconnected with an ERROR ("slow consumer") instead of growing memory or
//! silently losing messages; that is counted in `slow_consumers_closed`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::mpsc::UnboundedSender;

use crate::config::{ExpiredAction, Policy};
use crate::message::{now_ms, Delivery, Message, Outbound, Source};
use crate::store::{Journal, Op};

/// Identifies one subscription of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsumerKey {
    /// Connection id.
    pub conn: u64,
    /// Subscription key within the connection.
    pub sub: u64,
}

/// A connection's outbox plus the bytes queued in it (shared with the connection task).
#[derive(Clone)]
pub struct Outbox {
    /// Sender side of the connection's outbox.
    pub tx: UnboundedSender<Outbound>,
    /// Bytes queued and not yet taken by the connection task, counted with
    /// [`Message::outbox_bytes`] (body plus bookkeeping).
    pub pending: Arc<AtomicU64>,
}

impl Outbox {
    fn deliver(&self, d: Delivery) -> Result<(), Delivery> {
        let size = d.msg.outbox_bytes();
        self.pending.fetch_add(size, Ordering::Relaxed);
        self.tx.send(Outbound::Deliver(d)).map_err(|e| {
            self.pending.fetch_sub(size, Ordering::Relaxed);
            match e.0 {
                Outbound::Deliver(d) => d,
                Outbound::Close(_) => unreachable!("sent a Deliver"),
            }
        })
    }
}

/// A queue message with its delivery count.
#[derive(Clone)]
struct Entry {
    msg: Arc<Message>,
    deliveries: u32,
}

struct Consumer {
    key: ConsumerKey,
    outbox: Outbox,
    prefetch: u32,
    inflight: u32,
}

struct Inflight {
    entry: Entry,
    owner: ConsumerKey,
}

#[derive(Default)]
struct QueueState {
    /// Ready messages by priority (index = priority), each ordered by id.
    ready: [BTreeMap<u64, Entry>; 10],
    ready_count: usize,
    inflight: HashMap<u64, Inflight>,
    consumers: Vec<Consumer>,
    rr: usize,
}

/// Counters of one destination (monotonic unless noted).
#[derive(Debug, Default)]
pub struct DestinationStats {
    /// Messages accepted.
    pub enqueued: AtomicU64,
    /// Messages delivered (including redeliveries).
    pub delivered: AtomicU64,
    /// Redeliveries.
    pub redelivered: AtomicU64,
    /// Messages acknowledged (removed).
    pub acked: AtomicU64,
    /// Messages moved to a dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Expired messages removed.
    pub expired: AtomicU64,
    /// Topic subscribers disconnected for being too slow.
    pub slow_consumers_closed: AtomicU64,
    /// Body bytes of the messages in the queue, ready and in flight (a gauge; queues only).
    pub bytes: AtomicU64,
}

/// Why a message left a queue for its dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Delivered more than `max_redeliveries` + 1 times.
    MaxRedeliveries,
    /// Expired before delivery.
    Expired,
}

impl DeadLetterReason {
    /// Header value used on the dead-lettered copy.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeadLetterReason::MaxRedeliveries => "max-redeliveries",
            DeadLetterReason::Expired => "expired",
        }
    }
}

/// Work a queue operation leaves for the broker (done outside the queue lock).
#[derive(Default)]
pub struct Effects {
    /// Messages to move to `dlq` (their journal ack is part of the move).
    pub dead_letters: Vec<(Arc<Message>, u32, DeadLetterReason)>,
}

/// Bytes a store may have queued for its writer before producers wait (stop reading their
/// socket) until it is down to half: receipt-less persistent sends and spilled messages have no
/// receipt to slow their producer, so without this they could queue more than the disk absorbs.
pub const STORE_BACKLOG_LIMIT: u64 = 8 << 20;

/// Shared services a queue needs.
pub struct QueueContext {
    /// The journal, for acks of persistent messages.
    pub journal: Journal,
    /// The temporary store: non-persistent messages spilled past the memory budget (wiped at
    /// start-up, never fsynced for a client).
    pub temp: Journal,
    /// Memory accounting for bodies held in memory.
    pub memory: Arc<crate::broker::MemoryBudget>,
}

impl QueueContext {
    /// The store holding `msg`'s body when it is not in memory.
    pub fn store_for(&self, msg: &Message) -> &Journal {
        if msg.persistent {
            &self.journal
        } else {
            &self.temp
        }
    }

    /// Whether the journal or the temporary store has more queued for its writer than producers
    /// may add to (see the connection's store backpressure).
    pub fn stores_behind(&self) -> bool {
        self.journal.backlog_bytes() > STORE_BACKLOG_LIMIT
            || self.temp.backlog_bytes() > STORE_BACKLOG_LIMIT
    }

    /// The body, from memory or from its store (blocking read, usually from the page cache).
    pub fn body(&self, msg: &Message) -> Result<bytes::Bytes, crate::store::StoreError> {
        match &msg.body {
            Some(b) => Ok(b.clone()),
            None => self.store_for(msg).read_body(msg.id),
        }
    }

    /// Journals the removal of messages that live in a store (persistent, or spilled).
    pub fn forget(&self, msgs: &[&Message]) {
        let mut durable = Vec::new();
        let mut spilled = Vec::new();
        for m in msgs {
            if m.persistent {
                durable.push(Op::Ack { id: m.id });
            } else if m.body.is_none() {
                spilled.push(Op::Ack { id: m.id });
            }
        }
        if !durable.is_empty() {
            self.journal.append_lazy(durable);
        }
        if !spilled.is_empty() {
            self.temp.append_lazy(spilled);
        }
    }
}

/// A point-to-point destination.
pub struct Queue {
    /// STOMP name (`/queue/x`).
    pub name: Arc<str>,
    /// Resolved policy.
    pub policy: Policy,
    /// Counters.
    pub stats: DestinationStats,
    ctx: Arc<QueueContext>,
    /// Weak self-reference handed to deliveries (set by `Arc::new_cyclic`).
    me: Weak<Queue>,
    /// Never held across an `.await`.
    state: Mutex<QueueState>,
}

impl Queue {
    /// Shared services (stores, memory).
    pub fn context(&self) -> &Arc<QueueContext> {
        &self.ctx
    }

    /// A new, empty queue.
    pub fn new(name: Arc<str>, policy: Policy, ctx: Arc<QueueContext>) -> Arc<Self> {
        Arc::new_cyclic(|me| Queue {
            name,
            policy,
            stats: DestinationStats::default(),
            ctx,
            me: me.clone(),
            state: Mutex::new(QueueState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock would be a bug; keep serving with the state as it is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages waiting (ready) and in flight.
    pub fn depth(&self) -> (usize, usize) {
        let s = self.lock();
        (s.ready_count, s.inflight.len())
    }

    /// Number of consumers.
    pub fn consumer_count(&self) -> usize {
        self.lock().consumers.len()
    }

    /// Adds messages (already journaled if persistent) and dispatches.
    pub fn enqueue(self: &Arc<Self>, msgs: impl IntoIterator<Item = Arc<Message>>) -> Effects {
        self.enqueue_counted(msgs, 0)
    }

    /// Adds messages recovered from the journal. They may have been delivered (and not
    /// acknowledged) before the restart or failover, so their next delivery is flagged
    /// `redelivered` (delivery counts themselves are not journaled).
    pub fn enqueue_recovered(
        self: &Arc<Self>,
        msgs: impl IntoIterator<Item = Arc<Message>>,
    ) -> Effects {
        self.enqueue_counted(msgs, 1)
    }

    fn enqueue_counted(
        self: &Arc<Self>,
        msgs: impl IntoIterator<Item = Arc<Message>>,
        deliveries: u32,
    ) -> Effects {
        let mut s = self.lock();
        let mut n = 0;
        let mut bytes = 0;
        for msg in msgs {
            bytes += u64::from(msg.body_len);
            insert_ready(&mut s, Entry { msg, deliveries });
            n += 1;
        }
        self.stats.enqueued.fetch_add(n, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.dispatch(&mut s)
    }

    /// Adds a consumer and dispatches to it.
    pub fn add_consumer(
        self: &Arc<Self>,
        key: ConsumerKey,
        outbox: Outbox,
        prefetch: u32,
    ) -> Effects {
        let mut s = self.lock();
        s.consumers.push(Consumer {
            key,
            outbox,
            prefetch: prefetch.max(1),
            inflight: 0,
        });
        self.dispatch(&mut s)
    }

    /// Removes a consumer; its unacknowledged messages return to the queue. Those in
    /// `undelivered` never reached the client (still in its outbox) and keep their count; the others
    /// are redelivered, or dead-lettered past the redelivery limit.
    pub fn remove_consumer(
        self: &Arc<Self>,
        key: ConsumerKey,
        undelivered: &std::collections::HashSet<u64>,
    ) -> Effects {
        let mut s = self.lock();
        s.consumers.retain(|c| c.key != key);
        let ids: Vec<u64> = s
            .inflight
            .iter()
            .filter(|(_, f)| f.owner == key)
            .map(|(id, _)| *id)
            .collect();
        let mut effects = Effects::default();
        for id in ids {
            if let Some(f) = s.inflight.remove(&id) {
                let mut entry = f.entry;
                if undelivered.contains(&id) {
                    entry.deliveries = entry.deliveries.saturating_sub(1);
                    insert_ready(&mut s, entry);
                } else {
                    self.requeue_or_dead_letter(&mut s, entry, &mut effects);
                }
            }
        }
        let more = self.dispatch(&mut s);
        effects.dead_letters.extend(more.dead_letters);
        effects
    }

    /// Acknowledges messages held by `key`. Ids it does not hold are ignored (returned as
    /// `false` in the result's second field). When `journal` is true the acks of persistent
    /// messages are journaled here (lazily); otherwise the caller includes them in its own record
    /// and the persistent ids are returned.
    pub fn ack(self: &Arc<Self>, key: ConsumerKey, ids: &[u64], journal: bool) -> AckOutcome {
        let mut s = self.lock();
        let mut out = AckOutcome::default();
        for &id in ids {
            match s.inflight.get(&id) {
                Some(f) if f.owner == key => {}
                _ => {
                    out.unknown += 1;
                    continue;
                }
            }
            let Some(f) = s.inflight.remove(&id) else {
                continue;
            };
            if let Some(c) = s.consumers.iter_mut().find(|c| c.key == key) {
                c.inflight = c.inflight.saturating_sub(1);
            }
            self.release(&f.entry.msg);
            if f.entry.msg.persistent {
                out.persistent.push(id);
            } else if f.entry.msg.body.is_none() {
                self.ctx.temp.append_lazy(vec![Op::Ack { id }]);
            }
            out.acked += 1;
        }
        self.stats
            .acked
            .fetch_add(out.acked as u64, Ordering::Relaxed);
        if journal && !out.persistent.is_empty() {
            self.ctx
                .journal
                .append_lazy(out.persistent.iter().map(|&id| Op::Ack { id }).collect());
        }
        out.effects = self.dispatch(&mut s);
        out
    }

    /// Returns messages held by `key` to the queue for redelivery (NACK).
    pub fn nack(self: &Arc<Self>, key: ConsumerKey, ids: &[u64]) -> Effects {
        let mut s = self.lock();
        let mut effects = Effects::default();
        for &id in ids {
            let owned = matches!(s.inflight.get(&id), Some(f) if f.owner == key);
            if !owned {
                continue;
            }
            if let Some(f) = s.inflight.remove(&id) {
                if let Some(c) = s.consumers.iter_mut().find(|c| c.key == key) {
                    c.inflight = c.inflight.saturating_sub(1);
                }
                self.requeue_or_dead_letter(&mut s, f.entry, &mut effects);
            }
        }
        let more = self.dispatch(&mut s);
        effects.dead_letters.extend(more.dead_letters);
        effects
    }

    /// A snapshot of every message in the queue (ready and in flight, not expired), in delivery
    /// order (priority, then arrival). Used by browser subscriptions; consumes nothing.
    pub fn browse(&self) -> Vec<Arc<Message>> {
        let s = self.lock();
        let now = now_ms();
        let mut all: Vec<(u8, u64, Arc<Message>)> = s
            .ready
            .iter()
            .flat_map(|m| m.values())
            .map(|e| &e.msg)
            .chain(s.inflight.values().map(|f| &f.entry.msg))
            .filter(|m| !m.expired(now))
            .map(|m| (m.priority, m.id, m.clone()))
            .collect();
        all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        all.into_iter().map(|(_, _, m)| m).collect()
    }

    fn requeue_or_dead_letter(&self, s: &mut QueueState, entry: Entry, effects: &mut Effects) {
        if entry.deliveries > self.policy.max_redeliveries {
            self.release(&entry.msg);
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            effects.dead_letters.push((
                entry.msg,
                entry.deliveries,
                DeadLetterReason::MaxRedeliveries,
            ));
        } else {
            insert_ready(s, entry);
        }
    }

    /// A message left the queue (acknowledged, dead-lettered, expired): gives its body's memory
    /// back and takes it off the queue's byte count.
    fn release(&self, msg: &Message) {
        self.stats
            .bytes
            .fetch_sub(u64::from(msg.body_len), Ordering::Relaxed);
        if msg.body.is_some() {
            self.ctx.memory.release(msg.memory_bytes());
        }
    }

    /// Hands ready messages to consumers with room in their prefetch window, round robin.
    fn dispatch(&self, s: &mut QueueState) -> Effects {
        let mut effects = Effects::default();
        if s.consumers.is_empty() || s.ready_count == 0 {
            return effects;
        }
        let now = now_ms();
        let mut delivered = 0u64;
        let mut redelivered = 0u64;
        'outer: while s.ready_count > 0 {
            // Find a consumer with credit, round robin.
            let n = s.consumers.len();
            let mut chosen = None;
            for i in 0..n {
                let idx = (s.rr + i) % n;
                let c = &s.consumers[idx];
                if c.inflight < c.prefetch {
                    chosen = Some(idx);
                    break;
                }
            }
            let Some(idx) = chosen else { break };
            s.rr = (idx + 1) % n;
            // Take the next message: highest priority, then lowest id.
            let Some(mut entry) = pop_ready(s) else { break };
            if entry.msg.expired(now) {
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                self.release(&entry.msg);
                match self.policy.expired {
                    ExpiredAction::Drop => self.ctx.forget(&[&entry.msg]),
                    ExpiredAction::DeadLetter => {
                        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        effects.dead_letters.push((
                            entry.msg,
                            entry.deliveries,
                            DeadLetterReason::Expired,
                        ))
                    }
                }
                continue;
            }
            entry.deliveries += 1;
            if entry.deliveries > 1 {
                redelivered += 1;
            }
            let id = entry.msg.id;
            let c = &mut s.consumers[idx];
            let delivery = Delivery {
                sub_key: c.key.sub,
                source: Source::Queue(self.self_arc()),
                msg: entry.msg.clone(),
                delivery_count: entry.deliveries,
            };
            match c.outbox.deliver(delivery) {
                Ok(()) => {
                    c.inflight += 1;
                    let owner = c.key;
                    s.inflight.insert(id, Inflight { entry, owner });
                    delivered += 1;
                }
                Err(_) => {
                    // The connection is closing: drop this consumer, keep the message.
                    entry.deliveries -= 1;
                    if entry.deliveries > 0 {
                        redelivered -= 1;
                    }
                    let key = c.key;
                    s.consumers.retain(|c| c.key != key);
                    insert_ready(s, entry);
                    if s.consumers.is_empty() {
                        break 'outer;
                    }
                    s.rr %= s.consumers.len();
                }
            }
        }
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.stats
            .redelivered
            .fetch_add(redelivered, Ordering::Relaxed);
        effects
    }

    fn self_arc(&self) -> Arc<Queue> {
        // `self` is alive, so the Arc it lives in is too.
        self.me
            .upgrade()
            .expect("a live queue upgrades its own Weak")
    }
}

/// Result of [`Queue::ack`].
#[derive(Default)]
pub struct AckOutcome {
    /// Messages removed.
    pub acked: usize,
    /// Ids not held by that consumer (already acked, or never delivered to it).
    pub unknown: usize,
    /// Persistent ids removed (for the caller's journal record when it asked for none here).
    pub persistent: Vec<u64>,
    /// Follow-up work.
    pub effects: Effects,
}

fn insert_ready(s: &mut QueueState, entry: Entry) {
    let p = usize::from(entry.msg.priority.min(9));
    if s.ready[p].insert(entry.msg.id, entry).is_none() {
        s.ready_count += 1;
    }
}

fn pop_ready(s: &mut QueueState) -> Option<Entry> {
    for p in (0..10).rev() {
        if let Some((_, e)) = s.ready[p].pop_first() {
            s.ready_count -= 1;
            return Some(e);
        }
    }
    None
}

struct TopicSub {
    key: ConsumerKey,
    outbox: Outbox,
}

/// A publish/subscribe destination (non-durable subscriptions).
pub struct Topic {
    /// STOMP name (`/topic/x`).
    pub name: Arc<str>,
    /// Counters.
    pub stats: DestinationStats,
    /// Most bytes a subscriber's connection may have queued before it is disconnected.
    slow_limit: u64,
    /// Never held across an `.await`.
    subs: Mutex<Vec<TopicSub>>,
}

impl Topic {
    /// A new topic.
    pub fn new(name: Arc<str>, slow_limit: u64) -> Self {
        Topic {
            name,
            stats: DestinationStats::default(),
            slow_limit,
            subs: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<TopicSub>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a subscriber.
    pub fn subscribe(&self, key: ConsumerKey, outbox: Outbox) {
        self.lock().push(TopicSub { key, outbox });
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&self, key: ConsumerKey) {
        self.lock().retain(|s| s.key != key);
    }

    /// Number of subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.lock().len()
    }

    /// Fans `msg` out to every subscriber.
    pub fn publish(&self, msg: Arc<Message>) {
        self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
        if msg.expired(now_ms()) {
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut subs = self.lock();
        let mut closed = Vec::new();
        for sub in subs.iter() {
            if sub.outbox.pending.load(Ordering::Relaxed) > self.slow_limit {
                let _ = sub.outbox.tx.send(Outbound::Close(format!(
                    "slow consumer: more than {} bytes pending for {}",
                    self.slow_limit, self.name
                )));
                self.stats
                    .slow_consumers_closed
                    .fetch_add(1, Ordering::Relaxed);
                closed.push(sub.key);
                continue;
            }
            let d = Delivery {
                sub_key: sub.key.sub,
                source: Source::Topic,
                msg: msg.clone(),
                delivery_count: 1,
            };
            if sub.outbox.deliver(d).is_err() {
                closed.push(sub.key);
            } else {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !closed.is_empty() {
            subs.retain(|s| !closed.contains(&s.key));
        }
    }
}
