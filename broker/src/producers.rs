//! The producer de-duplication table: which `producer-id`/`producer-seq` pairs were accepted, so
//! that a SEND re-sent after a lost receipt or a failover is acknowledged without being enqueued
//! twice.
//!
//! # Identity
//!
//! A producer is the pair (authenticated user, `producer-id`). One user's ids never suppress
//! another user's messages, whatever ids either chooses (the journal stores the user beside the
//! id; see `store::producer_key`). Anonymous connections share the scope `anonymous`.
//!
//! # Bounds and the pruning rule
//!
//! * `[producers] max_id_bytes` (default 256): a longer `producer-id` is refused with an ERROR.
//! * `[producers] max_per_user` (default 10,000): a user's table holds at most this many ids;
//!   a new id past it makes the user's **least recently used** id forgotten. One user can only
//!   ever push out its own ids.
//! * `[producers] idle_expiry` (default 24 h): an id that sent nothing (not even a duplicate)
//!   for this long is forgotten.
//!
//! The guarantee this keeps: a re-sent message is recognised as a duplicate if its producer sent
//! anything within `idle_expiry` before, and its user has not started more than `max_per_user`
//! other producer ids since. The failover client re-sends within its reconnect time (ActiveMQ's
//! defaults: milliseconds to 30 s), far inside both bounds.
//!
//! Every forgotten id is returned to the caller, which journals an `Op::Forget` for it, so the
//! journal's copy of the table (checkpointed into each new segment) is bounded by the same rule.
//!
//! # Invariants
//!
//! * `UserProducers::by_id` and `UserProducers::lru` hold the same ids; `lru` is keyed by each
//!   id's last use (`tick`, strictly increasing), so its first entry is the least recently used.
//! * `len` is the total number of ids; a user with no ids is removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ProducerSettings;
use crate::store::{producer_key, split_producer_key};

/// How often, at most, a check sweeps every user for idle ids.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Outcome of the de-duplication check for one SEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedup {
    /// First time: accept.
    New,
    /// Already accepted before: acknowledge without enqueueing again.
    Duplicate,
}

/// One producer id's state.
#[derive(Debug)]
struct Entry {
    /// Highest sequence number accepted.
    seq: u64,
    /// Key of this id in `lru`.
    tick: u64,
    /// Last SEND (new or duplicate).
    used: Instant,
}

/// One user's producer ids.
#[derive(Debug, Default)]
struct UserProducers {
    by_id: HashMap<Box<str>, Entry>,
    lru: BTreeMap<u64, Box<str>>,
}

/// The bounded, user-scoped de-duplication table (see the module documentation). Not
/// synchronised: the broker keeps it behind a short `Mutex`.
#[derive(Debug)]
pub struct ProducerTable {
    max_per_user: usize,
    idle_expiry: Option<Duration>,
    users: HashMap<Arc<str>, UserProducers>,
    clock: u64,
    len: usize,
    next_sweep: Instant,
    evicted: u64,
    expired: u64,
}

impl ProducerTable {
    /// An empty table with the bounds of `settings`.
    pub fn new(settings: &ProducerSettings, now: Instant) -> Self {
        ProducerTable {
            max_per_user: settings.max_per_user,
            idle_expiry: (!settings.idle_expiry.0.is_zero()).then_some(settings.idle_expiry.0),
            users: HashMap::new(),
            clock: 0,
            len: 0,
            next_sweep: now + SWEEP_EVERY,
            evicted: 0,
            expired: 0,
        }
    }

    /// The table rebuilt from the journal's (keys made by `store::producer_key`), every id
    /// counted as used `now`. Keys that do not split and ids past a user's bound (the bound was
    /// lowered) are pushed to `forgotten`.
    pub fn recovered(
        settings: &ProducerSettings,
        journal: HashMap<String, u64>,
        now: Instant,
        forgotten: &mut Vec<String>,
    ) -> Self {
        let mut t = ProducerTable::new(settings, now);
        // Sorted: which ids a lowered bound forgets does not depend on hash order.
        let mut entries: Vec<(String, u64)> = journal.into_iter().collect();
        entries.sort_unstable();
        let before = forgotten.len();
        for (key, seq) in entries {
            match split_producer_key(&key) {
                Some((user, id)) => {
                    let user: Arc<str> = Arc::from(user);
                    t.check(&user, id, seq, now, forgotten);
                }
                None => forgotten.push(key),
            }
        }
        let dropped = forgotten.len() - before;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                kept = t.len,
                "producer table: ids over [producers] max_per_user (or unreadable) forgotten at start-up"
            );
        }
        t.evicted = 0;
        t
    }

    /// Checks and records `seq` of producer `id` of `user`. Sequences must increase; anything
    /// at or below the highest accepted one is a duplicate. Ids forgotten to make room (or found
    /// idle) are pushed to `forgotten` as journal keys.
    pub fn check(
        &mut self,
        user: &Arc<str>,
        id: &str,
        seq: u64,
        now: Instant,
        forgotten: &mut Vec<String>,
    ) -> Dedup {
        if now >= self.next_sweep {
            self.sweep(now, forgotten);
        }
        self.clock += 1;
        let tick = self.clock;
        let u = self.users.entry(user.clone()).or_default();
        if let Some(e) = u.by_id.get_mut(id) {
            let name = u.lru.remove(&e.tick).unwrap_or_else(|| id.into());
            u.lru.insert(tick, name);
            e.tick = tick;
            e.used = now;
            if seq <= e.seq {
                return Dedup::Duplicate;
            }
            e.seq = seq;
            return Dedup::New;
        }
        if u.by_id.len() >= self.max_per_user {
            if let Some((_, old)) = u.lru.pop_first() {
                u.by_id.remove(&old);
                forgotten.push(producer_key(user, &old));
                self.evicted += 1;
                self.len -= 1;
            }
        }
        u.by_id.insert(
            id.into(),
            Entry {
                seq,
                tick,
                used: now,
            },
        );
        u.lru.insert(tick, id.into());
        self.len += 1;
        Dedup::New
    }

    /// Forgets every id idle for longer than `idle_expiry`.
    pub fn sweep(&mut self, now: Instant, forgotten: &mut Vec<String>) {
        self.next_sweep = now + SWEEP_EVERY;
        let Some(expiry) = self.idle_expiry else {
            return;
        };
        let mut removed = 0;
        self.users.retain(|user, u| {
            while let Some((_, id)) = u.lru.first_key_value() {
                let idle = u
                    .by_id
                    .get(id)
                    .is_none_or(|e| now.saturating_duration_since(e.used) >= expiry);
                if !idle {
                    break;
                }
                if let Some((_, id)) = u.lru.pop_first() {
                    u.by_id.remove(&id);
                    forgotten.push(producer_key(user, &id));
                    removed += 1;
                }
            }
            !u.by_id.is_empty()
        });
        self.len -= removed;
        self.expired += removed as u64;
    }

    /// Producer ids in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ids forgotten because their user's table was full, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Ids forgotten because they were idle, since start.
    pub fn expired(&self) -> u64 {
        self.expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn settings(max_per_user: usize, idle: Duration) -> ProducerSettings {
        ProducerSettings {
            max_per_user,
            idle_expiry: HumanDuration(idle),
            ..ProducerSettings::default()
        }
    }

    #[test]
    fn users_never_share_an_id() {
        let now = Instant::now();
        let mut t = ProducerTable::new(&ProducerSettings::default(), now);
        let (eve, bob): (Arc<str>, Arc<str>) = (Arc::from("eve"), Arc::from("bob"));
        let mut f = Vec::new();
        assert_eq!(t.check(&eve, "p", u64::MAX, now, &mut f), Dedup::New);
        assert_eq!(t.check(&bob, "p", 1, now, &mut f), Dedup::New);
        assert_eq!(t.check(&bob, "p", 1, now, &mut f), Dedup::Duplicate);
        assert_eq!(t.check(&bob, "p", 2, now, &mut f), Dedup::New);
        assert_eq!(t.check(&eve, "p", 5, now, &mut f), Dedup::Duplicate);
        assert!(f.is_empty());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_full_user_forgets_its_own_least_recently_used_id() {
        let now = Instant::now();
        let mut t = ProducerTable::new(&settings(3, Duration::ZERO), now);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut f = Vec::new();
        t.check(&b, "keep", 1, now, &mut f);
        for id in ["1", "2", "3"] {
            t.check(&a, id, 1, now, &mut f);
        }
        // "1" used again: "2" is now the least recently used.
        assert_eq!(t.check(&a, "1", 1, now, &mut f), Dedup::Duplicate);
        assert_eq!(t.check(&a, "4", 1, now, &mut f), Dedup::New);
        assert_eq!(f, vec![producer_key("a", "2")]);
        assert_eq!(t.evicted(), 1);
        assert_eq!(t.len(), 4);
        // Another user is untouched, however many ids `a` makes.
        for i in 0..100 {
            t.check(&a, &format!("x{i}"), 1, now, &mut f);
        }
        assert_eq!(t.check(&b, "keep", 1, now, &mut f), Dedup::Duplicate);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn idle_ids_expire() {
        let t0 = Instant::now();
        let mut t = ProducerTable::new(&settings(100, Duration::from_secs(60)), t0);
        let u: Arc<str> = Arc::from("u");
        let mut f = Vec::new();
        t.check(&u, "old", 7, t0, &mut f);
        t.check(&u, "busy", 1, t0, &mut f);
        t.check(&u, "busy", 2, t0 + Duration::from_secs(50), &mut f);
        t.check(&u, "busy", 3, t0 + Duration::from_secs(61), &mut f);
        assert_eq!(f, vec![producer_key("u", "old")]);
        assert_eq!((t.len(), t.expired()), (1, 1));
        // A forgotten id starts over (its re-send would be accepted: the documented bound).
        assert_eq!(
            t.check(&u, "old", 7, t0 + Duration::from_secs(62), &mut f),
            Dedup::New
        );
    }

    #[test]
    fn recovered_tables_keep_the_bounds() {
        let now = Instant::now();
        let mut journal = HashMap::new();
        for i in 0..5 {
            journal.insert(producer_key("a", &format!("p{i}")), i);
        }
        journal.insert(producer_key("b", "q"), 9);
        journal.insert("not a key".into(), 1);
        let mut f = Vec::new();
        let mut t = ProducerTable::recovered(&settings(3, Duration::ZERO), journal, now, &mut f);
        assert_eq!(t.len(), 4);
        assert_eq!(f.len(), 3);
        assert!(f.contains(&"not a key".to_string()));
        let b: Arc<str> = Arc::from("b");
        assert_eq!(t.check(&b, "q", 9, now, &mut f), Dedup::Duplicate);
    }
}
