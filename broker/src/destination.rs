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
//! - `consumer.owned` holds exactly the ids of the `inflight` entries owned by that consumer;
//! - a consumer is in `with_credit` exactly when it is open and owns fewer messages than its
//!   prefetch window;
//! - journal acks are written for persistent messages only, and exactly once per message.
//!
//! Consumer bookkeeping never scans: adding, removing (with its in-flight messages) and picking
//! the next consumer with credit (round robin in subscription order) cost O(log n) in the
//! number of consumers plus O(1) per message the consumer holds, so a connection with many
//! subscriptions that disconnects does not hold a queue lock for O(n²) work.
//! [`DestinationStats::bookkeeping_steps`] counts that work.
//!
//! Work that needs another destination (dead-lettering) is returned to the caller as
//! [`Effects`] rather than done under this queue's lock, so no two queue locks are ever held.
//!
//! A [`Topic`] fans a message out to every current subscriber; subscriptions are not durable and
//! topic messages are never journaled. A subscriber whose connection has more than its pending
//! limit queued is disconnected with an ERROR ("slow consumer") instead of growing memory or
//! silently losing messages; that is counted in `slow_consumers_closed`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// Ids of the messages in flight to this consumer.
    owned: HashSet<u64>,
    /// Its connection is gone (a delivery failed): no more deliveries; removed by
    /// [`Queue::remove_consumer`], which returns what it still owns.
    closed: bool,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        !self.closed && (self.owned.len() as u64) < u64::from(self.prefetch)
    }
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
    /// Consumers by subscription order (a number that only grows).
    consumers: BTreeMap<u64, Consumer>,
    /// A consumer's subscription order.
    order: HashMap<ConsumerKey, u64>,
    /// Orders of the consumers with room in their prefetch window.
    with_credit: BTreeSet<u64>,
    next_order: u64,
    /// Order of the consumer served last (round robin continues after it).
    rr: u64,
}

impl QueueState {
    /// Takes message `id` off `key`'s window (acked, nacked or returned).
    fn settle(&mut self, key: ConsumerKey, id: u64) {
        let Some(&o) = self.order.get(&key) else {
            return;
        };
        if let Some(c) = self.consumers.get_mut(&o) {
            c.owned.remove(&id);
            if c.has_credit() {
                self.with_credit.insert(o);
            }
        }
    }

    /// The next consumer with credit after the last one served, round robin.
    fn next_with_credit(&self) -> Option<u64> {
        self.with_credit
            .range(self.rr + 1..)
            .next()
            .or_else(|| self.with_credit.iter().next())
            .copied()
    }
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
    /// Consumer bookkeeping work done under the lock: consumers added, removed or picked for a
    /// delivery plus in-flight messages returned by a removed consumer. O(1) per event by design
    /// (the tests check it; a scanning implementation would count every entry it visits).
    pub bookkeeping_steps: AtomicU64,
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
    pub memory: Arc<crate::memory::MemoryBudget>,
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

    /// Whether the queue holds nothing and nobody: no messages, no consumers.
    pub fn is_idle(&self) -> bool {
        let s = self.lock();
        s.ready_count == 0 && s.inflight.is_empty() && s.consumers.is_empty()
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
        if s.order.contains_key(&key) {
            // A key is used once per connection; keep the first registration.
            return Effects::default();
        }
        let o = s.next_order;
        s.next_order += 1;
        s.order.insert(key, o);
        s.consumers.insert(
            o,
            Consumer {
                key,
                outbox,
                prefetch: prefetch.max(1),
                owned: HashSet::new(),
                closed: false,
            },
        );
        s.with_credit.insert(o);
        self.stats.bookkeeping_steps.fetch_add(1, Ordering::Relaxed);
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
        let Some(o) = s.order.remove(&key) else {
            return Effects::default();
        };
        s.with_credit.remove(&o);
        let Some(c) = s.consumers.remove(&o) else {
            return Effects::default();
        };
        self.stats
            .bookkeeping_steps
            .fetch_add(1 + c.owned.len() as u64, Ordering::Relaxed);
        let mut ids: Vec<u64> = c.owned.into_iter().collect();
        // Back in arrival order (the ready maps sort by id anyway; this keeps effects stable).
        ids.sort_unstable();
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
            s.settle(key, id);
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
                s.settle(key, id);
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
        } else {
            self.ctx.memory.release_spilled(msg.header_bytes());
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
        while s.ready_count > 0 {
            // The next consumer with credit, round robin (O(log n), no scan).
            let Some(o) = s.next_with_credit() else { break };
            self.stats.bookkeeping_steps.fetch_add(1, Ordering::Relaxed);
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
            s.rr = o;
            entry.deliveries += 1;
            let id = entry.msg.id;
            let source = Source::Queue(self.self_arc());
            let Some(c) = s.consumers.get_mut(&o) else {
                insert_ready(s, entry);
                break;
            };
            let delivery = Delivery {
                sub_key: c.key.sub,
                source,
                msg: entry.msg.clone(),
                delivery_count: entry.deliveries,
            };
            match c.outbox.deliver(delivery) {
                Ok(()) => {
                    c.owned.insert(id);
                    let owner = c.key;
                    let full = !c.has_credit();
                    if entry.deliveries > 1 {
                        redelivered += 1;
                    }
                    s.inflight.insert(id, Inflight { entry, owner });
                    if full {
                        s.with_credit.remove(&o);
                    }
                    delivered += 1;
                }
                Err(_) => {
                    // The connection is closing: no more deliveries to this consumer (its
                    // connection removes it and gets back what it owns); keep the message.
                    c.closed = true;
                    s.with_credit.remove(&o);
                    entry.deliveries -= 1;
                    insert_ready(s, entry);
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

/// A topic's subscribers: a list to fan out over, plus each one's position so that removing
/// one is O(1) (swap with the last) instead of a scan.
#[derive(Default)]
struct TopicSubs {
    list: Vec<TopicSub>,
    pos: HashMap<ConsumerKey, usize>,
}

impl TopicSubs {
    fn add(&mut self, sub: TopicSub) {
        if self.pos.contains_key(&sub.key) {
            return;
        }
        self.pos.insert(sub.key, self.list.len());
        self.list.push(sub);
    }

    fn remove(&mut self, key: ConsumerKey) {
        let Some(i) = self.pos.remove(&key) else {
            return;
        };
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.pos.insert(moved.key, i);
        }
    }
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
    subs: Mutex<TopicSubs>,
}

impl Topic {
    /// A new topic.
    pub fn new(name: Arc<str>, slow_limit: u64) -> Self {
        Topic {
            name,
            stats: DestinationStats::default(),
            slow_limit,
            subs: Mutex::new(TopicSubs::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TopicSubs> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a subscriber.
    pub fn subscribe(&self, key: ConsumerKey, outbox: Outbox) {
        self.lock().add(TopicSub { key, outbox });
        self.stats.bookkeeping_steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes a subscriber (O(1)).
    pub fn unsubscribe(&self, key: ConsumerKey) {
        self.lock().remove(key);
        self.stats.bookkeeping_steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.lock().list.len()
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
        for sub in subs.list.iter() {
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
        for key in closed {
            subs.remove(key);
        }
    }
}
