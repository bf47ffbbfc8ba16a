//! The broker's shared state: destinations, the journal, de-duplication, memory accounting.
//!
//! [`Broker`] is shared (`Arc`) by every connection task. It owns the registry of destinations
//! (created on first use), assigns message ids, keeps the producer de-duplication table, and
//! applies the follow-up [`Effects`] of queue operations (dead-lettering) outside any queue lock.
//! Locks here are short `std` locks and never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::BrokerConfig;
use crate::destination::{Effects, Queue, QueueContext, Topic};
use crate::directory::{Create, Directory, Refused};
use crate::message::{now_ms, Message};
use crate::producers::ProducerTable;
use crate::store::{Journal, Op, ProducerSeq, Recovered};

/// Journals the removal of de-duplication entries the table forgot (lazily: until it is on disk
/// the journal keeps an entry, which only errs on the safe side).
fn forget_producers(journal: &Journal, keys: Vec<String>) {
    if !keys.is_empty() {
        journal.append_lazy(keys.into_iter().map(|key| Op::Forget { key }).collect());
    }
}

pub use crate::memory::MemoryBudget;

/// Broker-wide counters.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicUsize,
    /// Logins refused.
    pub auth_failures: AtomicU64,
    /// Connections closed because of a protocol error.
    pub protocol_errors: AtomicU64,
    /// Sends dropped as duplicates (producer id + sequence already seen).
    pub duplicates_dropped: AtomicU64,
}

pub use crate::producers::Dedup;

/// Shared broker state.
pub struct Broker {
    /// Validated configuration.
    pub config: Arc<BrokerConfig>,
    /// The journal.
    pub journal: Journal,
    /// Login checks.
    pub auth: Arc<Authenticator>,
    /// Counters.
    pub stats: BrokerStats,
    /// Cancelled when the broker shuts down (or steps down as master).
    pub shutdown: CancellationToken,
    /// Whether the broker may acknowledge anything now (always open when standalone).
    pub gate: Arc<crate::gate::Gate>,
    /// What each client may make the broker hold (`[quotas]`), and refusals counted.
    pub quotas: Arc<crate::quota::QuotaState>,
    ctx: Arc<QueueContext>,
    /// Queues and topics by name (creation cap, idle removal).
    destinations: Directory<Queue, Topic>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    /// Highest sequence accepted per (user, producer id), bounded. Never held across an
    /// `.await`.
    producers: Mutex<ProducerTable>,
}

impl Broker {
    /// Builds the broker from a recovered journal, rebuilding every queue.
    pub fn new(
        config: Arc<BrokerConfig>,
        journal: Journal,
        temp: Journal,
        recovered: Recovered,
        auth: Arc<Authenticator>,
        gate: Arc<crate::gate::Gate>,
        shutdown: CancellationToken,
    ) -> Arc<Broker> {
        let memory = Arc::new(MemoryBudget::new(config.limits.max_memory.0));
        let mut forgotten = Vec::new();
        let producers = ProducerTable::recovered(
            &config.producers,
            recovered.producers,
            Instant::now(),
            &mut forgotten,
        );
        forget_producers(&journal, forgotten);
        let ctx = Arc::new(QueueContext {
            journal: journal.clone(),
            temp,
            memory,
        });
        let quotas = Arc::new(crate::quota::QuotaState::new(
            config.quotas.clone(),
            ctx.memory.clone(),
        ));
        let destinations = Directory::new(
            config.quotas.max_destinations,
            config.quotas.destination_idle_timeout.0,
        );
        let broker = Arc::new(Broker {
            config,
            journal,
            auth,
            stats: BrokerStats::default(),
            shutdown,
            gate,
            quotas,
            destinations,
            ctx,
            next_id: AtomicU64::new(recovered.next_id.max(1)),
            next_conn: AtomicU64::new(1),
            producers: Mutex::new(producers),
        });
        // Rebuild queues in journal order, grouping consecutive messages per queue.
        let mut by_queue: HashMap<String, Vec<Arc<Message>>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for stored in recovered.messages {
            let mut msg = Message::from_stored(stored);
            if msg.body.is_some() && !broker.ctx.memory.try_reserve(msg.memory_bytes()) {
                // Past the body cache: the journal serves the body at delivery.
                msg.body = None;
            }
            if msg.body.is_none() {
                // The headers stay in memory with the message: they count (`crate::memory`).
                broker.ctx.memory.charge_spilled(msg.header_bytes());
            }
            let dest = msg.destination.to_string();
            let list = by_queue.entry(dest.clone()).or_insert_with(|| {
                order.push(dest);
                Vec::new()
            });
            list.push(Arc::new(msg));
        }
        for name in order {
            if let Some(msgs) = by_queue.remove(&name) {
                let q = broker.queue(&name);
                let fx = q.enqueue_recovered(msgs);
                broker.apply(fx);
            }
        }
        broker
    }

    /// A fresh message id.
    pub fn next_message_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Memory accounting.
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.ctx.memory
    }

    /// Stores and memory shared with the queues.
    pub fn context(&self) -> &Arc<QueueContext> {
        &self.ctx
    }

    /// The queue named `name` (`/queue/x`), created on first use (by the broker itself:
    /// never refused; clients go through [`Broker::client_queue`]).
    pub fn queue(&self, name: &str) -> Arc<Queue> {
        self.destinations
            .queue(name, Create::Always, |n| self.new_queue(n))
            .expect("the broker may always create")
    }

    /// The queue named `name` for a client: created only when `may_create` (the `admin` right,
    /// or no authorization configured) and under `quotas.max_destinations`.
    pub fn client_queue(&self, name: &str, may_create: bool) -> Result<Arc<Queue>, Refused> {
        let create = if may_create {
            Create::Client
        } else {
            Create::Never
        };
        self.destinations.queue(name, create, |n| self.new_queue(n))
    }

    fn new_queue(&self, name: Arc<str>) -> Arc<Queue> {
        let policy = self.config.destinations.policy_for(&name);
        Queue::new(name, policy, self.ctx.clone())
    }

    fn new_topic(&self, name: Arc<str>) -> Arc<Topic> {
        let slow_limit = self.config.limits.max_pending_bytes.0.saturating_mul(4);
        Arc::new(Topic::new(name, slow_limit))
    }

    /// Whether the queue or topic named `name` (`/queue/x`, `/topic/x`) exists already.
    pub fn destination_exists(&self, name: &str) -> bool {
        self.destinations.exists(name, !name.starts_with("/topic/"))
    }

    /// The topic named `name` (`/topic/x`), created on first use (by the broker itself).
    pub fn topic(&self, name: &str) -> Arc<Topic> {
        self.destinations
            .topic(name, Create::Always, |n| self.new_topic(n))
            .expect("the broker may always create")
    }

    /// The topic named `name` for a client (see [`Broker::client_queue`]).
    pub fn client_topic(&self, name: &str, may_create: bool) -> Result<Arc<Topic>, Refused> {
        let create = if may_create {
            Create::Client
        } else {
            Create::Never
        };
        self.destinations.topic(name, create, |n| self.new_topic(n))
    }

    /// Every queue, for statistics and tests.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.destinations.queues()
    }

    /// Every topic, for statistics.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.destinations.topics()
    }

    /// The destinations directory (count, cap, idle removal counters).
    pub fn destinations(&self) -> &Directory<Queue, Topic> {
        &self.destinations
    }

    /// Removes idle destinations every half idle timeout (clamped to 50 ms..30 s) until the
    /// broker shuts down. Nothing to do when `quotas.destination_idle_timeout` is 0.
    pub fn spawn_idle_sweeper(self: &Arc<Self>) {
        let every = self.destinations.idle_timeout() / 2;
        if every.is_zero() {
            return;
        }
        let every = every.clamp(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(30),
        );
        let weak = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(b) = weak.upgrade() else { return };
                let removed = b.destinations.sweep();
                if removed > 0 {
                    tracing::debug!(removed, "idle destinations removed");
                }
            }
        });
    }

    /// Producer ids in the de-duplication table, and how many were forgotten since start
    /// because their user's table was full or because they were idle: `(ids, evicted, expired)`.
    pub fn producer_ids(&self) -> (usize, u64, u64) {
        let t = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        (t.len(), t.evicted(), t.expired())
    }

    /// Checks and records a producer's sequence number. Sequences are per (user, producer id)
    /// and must increase; anything at or below the highest accepted one is a duplicate (a
    /// re-send after a lost receipt or a failover). Ids the bounded table forgets on the way are
    /// journaled as forgotten (see [`crate::producers`]).
    pub fn dedup(&self, producer: Option<&ProducerSeq>) -> Dedup {
        let Some(p) = producer else { return Dedup::New };
        let mut forgotten = Vec::new();
        let mut table = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        let verdict = table.check(&p.user, &p.producer, p.seq, Instant::now(), &mut forgotten);
        // Queued under the lock (a cheap push): a Forget can never land in the journal after a
        // newer Add of the same key accepted by another connection.
        forget_producers(&self.journal, forgotten);
        drop(table);
        if verdict == Dedup::Duplicate {
            self.stats
                .duplicates_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// Accounts a new queue message's body against the memory budget. Past the budget the body
    /// is dropped from memory: a persistent message's is in the journal already (the caller
    /// journaled it); a non-persistent one is spilled to the temporary store here.
    pub fn admit(&self, mut msg: Message) -> Message {
        if msg.body.is_none() {
            self.ctx.memory.charge_spilled(msg.header_bytes());
            return msg;
        }
        if self.ctx.memory.try_reserve(msg.memory_bytes()) {
            // A body decoded from a socket is a view into a shared read buffer (64 KiB chunks):
            // keeping the view would keep the whole chunk alive, invisible to the budget. Small
            // bodies are copied out; large ones are most of their chunk anyway.
            if let Some(b) = &msg.body {
                if b.len() < (64 << 10) {
                    msg.body = Some(bytes::Bytes::copy_from_slice(b));
                }
            }
            return msg;
        }
        if !msg.persistent {
            self.ctx.temp.append_lazy(vec![Op::Add(msg.to_stored())]);
        }
        msg.body = None;
        // The headers stay in memory with the message: they count (see `crate::memory`).
        self.ctx.memory.charge_spilled(msg.header_bytes());
        msg
    }

    /// Carries out follow-up work of queue operations (dead-letter moves).
    pub fn apply(&self, mut effects: Effects) {
        // A dead-letter move can itself produce effects (an expired message in the DLQ); loop.
        let mut rounds = 0;
        while !effects.dead_letters.is_empty() && rounds < 8 {
            rounds += 1;
            let mut next = Effects::default();
            for (msg, deliveries, reason) in std::mem::take(&mut effects.dead_letters) {
                let source = msg.destination.to_string();
                let policy = self.config.destinations.policy_for(&source);
                let dlq_name = match source.strip_prefix("/queue/") {
                    Some(rest) => format!("/queue/{}{rest}", policy.dead_letter_prefix),
                    None => format!("/queue/{}{source}", policy.dead_letter_prefix),
                };
                let mut headers = msg.headers.clone();
                headers.retain(|(k, _)| k != "original-destination" && k != "dlq-reason");
                headers.push(("original-destination".into(), source.clone()));
                headers.push(("dlq-reason".into(), reason.as_str().into()));
                headers.push(("original-message-id".into(), msg.message_id()));
                headers.push(("dlq-delivery-count".into(), deliveries.to_string()));
                let body = match self.ctx.body(&msg) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::error!(id = msg.id, error = %e, "cannot read body for dead-letter move; message kept in its store");
                        continue;
                    }
                };
                let moved = Message {
                    id: self.next_message_id(),
                    destination: Arc::from(dlq_name.as_str()),
                    persistent: msg.persistent,
                    priority: msg.priority,
                    // A dead-lettered message does not expire again.
                    expires: 0,
                    timestamp: now_ms(),
                    producer: None,
                    headers,
                    body_len: msg.body_len,
                    body,
                };
                if msg.persistent {
                    self.journal
                        .append_lazy(vec![Op::Add(moved.to_stored()), Op::Ack { id: msg.id }]);
                } else {
                    self.ctx.forget(&[&msg]);
                }
                let moved = self.admit(moved);
                tracing::info!(from = %source, to = %dlq_name, reason = reason.as_str(), id = msg.id, "message dead-lettered");
                let fx = self.queue(&dlq_name).enqueue([Arc::new(moved)]);
                next.dead_letters.extend(fx.dead_letters);
            }
            effects = next;
        }
    }
}
