//! The broker's destinations by name: creation on first use, a cap on how many clients may
//! create, and removal of idle ones.
//!
//! Every destination is created on first use (a SEND or SUBSCRIBE naming it, a queue rebuilt from
//! the journal, a dead-letter queue). A [`Directory`] holds one map per kind; creation *by a
//! client* ([`Directory::get_or_create`] with [`Create::Client`]) is refused past
//! `quotas.max_destinations` destinations in all, and needs the caller to hold the `admin` right
//! (the connection checks it, see `crate::authz`). Internal creations ([`Create::Always`]: journal
//! recovery, dead-letter moves) are never refused, so the count may exceed the cap by those.
//!
//! A destination is idle when it holds nothing and nobody ([`Idle::is_idle`]: no messages, no
//! consumers or subscribers) **and** nothing else holds a reference to it (no subscription,
//! delivery, pending route or transaction of any connection: its `Arc` is held by the directory
//! only). [`Directory::sweep`] removes destinations that stayed idle for
//! `quotas.destination_idle_timeout`. The reference check is made under the map's write lock,
//! and every lookup clones the `Arc` under the read lock, so a destination cannot be removed while
//! anybody can still put a message into it: a message is never routed into a removed queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What a destination must answer for the idle sweep.
pub trait Idle {
    /// No messages, no consumers, nothing in flight.
    fn is_idle(&self) -> bool;
}

impl Idle for crate::destination::Queue {
    fn is_idle(&self) -> bool {
        crate::destination::Queue::is_idle(self)
    }
}

impl Idle for crate::destination::Topic {
    fn is_idle(&self) -> bool {
        self.subscriber_count() == 0
    }
}

/// Who is creating a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// The broker itself (recovery, dead-letter queues): never refused.
    Always,
    /// A client allowed to create (the `admin` right, or no authorization configured): refused
    /// past the cap.
    Client,
    /// A client without the `admin` right: only existing destinations.
    Never,
}

/// Why a client's lookup found no destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It does not exist and the client may not create it.
    NotFound,
    /// It does not exist and `quotas.max_destinations` are there already.
    Full {
        /// The cap.
        max: usize,
    },
}

struct Slot<T> {
    dest: Arc<T>,
    /// Milliseconds since the directory's start when it was first seen idle; 0 = not idle.
    idle_since: AtomicU64,
}

/// One kind of destination by name.
struct Map<T> {
    map: RwLock<HashMap<Arc<str>, Slot<T>>>,
}

impl<T> Map<T> {
    fn new() -> Self {
        Map {
            map: RwLock::new(HashMap::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Slot<T>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Slot<T>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters of the directory (for `/metrics`).
#[derive(Debug, Default)]
pub struct DirectoryStats {
    /// Destinations created.
    pub created: AtomicU64,
    /// Idle destinations removed.
    pub removed: AtomicU64,
    /// Creations refused at `quotas.max_destinations`.
    pub refused_full: AtomicU64,
}

/// Queues and topics by name (see the module documentation).
pub struct Directory<Q, T> {
    queues: Map<Q>,
    topics: Map<T>,
    count: AtomicUsize,
    max: usize,
    idle_timeout: Duration,
    start: Instant,
    /// Counters.
    pub stats: DirectoryStats,
}

impl<Q: Idle, T: Idle> Directory<Q, T> {
    /// An empty directory: at most `max` client-created destinations; idle ones removed after
    /// `idle_timeout` (zero: never).
    pub fn new(max: usize, idle_timeout: Duration) -> Self {
        Directory {
            queues: Map::new(),
            topics: Map::new(),
            count: AtomicUsize::new(0),
            max,
            idle_timeout,
            start: Instant::now(),
            stats: DirectoryStats::default(),
        }
    }

    /// Destinations held now (queues plus topics).
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The idle timeout (zero: idle destinations are kept).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The queue `name`, created with `make` when missing and `create` allows it.
    pub fn queue(
        &self,
        name: &str,
        create: Create,
        make: impl FnOnce(Arc<str>) -> Arc<Q>,
    ) -> Result<Arc<Q>, Refused> {
        self.get_or_create(&self.queues, name, create, make)
    }

    /// The topic `name`, created with `make` when missing and `create` allows it.
    pub fn topic(
        &self,
        name: &str,
        create: Create,
        make: impl FnOnce(Arc<str>) -> Arc<T>,
    ) -> Result<Arc<T>, Refused> {
        self.get_or_create(&self.topics, name, create, make)
    }

    /// Whether the queue or topic `name` exists.
    pub fn exists(&self, name: &str, is_queue: bool) -> bool {
        if is_queue {
            self.queues.read().contains_key(name)
        } else {
            self.topics.read().contains_key(name)
        }
    }

    /// Every queue.
    pub fn queues(&self) -> Vec<Arc<Q>> {
        self.queues
            .read()
            .values()
            .map(|s| s.dest.clone())
            .collect()
    }

    /// Every topic.
    pub fn topics(&self) -> Vec<Arc<T>> {
        self.topics
            .read()
            .values()
            .map(|s| s.dest.clone())
            .collect()
    }

    fn get_or_create<D>(
        &self,
        map: &Map<D>,
        name: &str,
        create: Create,
        make: impl FnOnce(Arc<str>) -> Arc<D>,
    ) -> Result<Arc<D>, Refused> {
        if let Some(s) = map.read().get(name) {
            s.idle_since.store(0, Ordering::Relaxed);
            return Ok(s.dest.clone());
        }
        let mut w = map.write();
        if let Some(s) = w.get(name) {
            s.idle_since.store(0, Ordering::Relaxed);
            return Ok(s.dest.clone());
        }
        match create {
            Create::Never => return Err(Refused::NotFound),
            Create::Client if self.count.load(Ordering::Relaxed) >= self.max => {
                self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Full { max: self.max });
            }
            _ => {}
        }
        let key: Arc<str> = Arc::from(name);
        let dest = make(key.clone());
        w.insert(
            key,
            Slot {
                dest: dest.clone(),
                idle_since: AtomicU64::new(0),
            },
        );
        self.count.fetch_add(1, Ordering::Relaxed);
        self.stats.created.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(destination = name, "destination created");
        Ok(dest)
    }

    /// Removes the destinations idle for the idle timeout; marks the newly idle ones. Returns
    /// how many were removed. Cost: one pass over the destinations under the read locks, and
    /// the write lock only to remove (re-checked there).
    pub fn sweep(&self) -> usize {
        if self.idle_timeout.is_zero() {
            return 0;
        }
        let now = (self.start.elapsed().as_millis() as u64).max(1);
        let due = self.idle_timeout.as_millis() as u64;
        let removed =
            Self::sweep_map(&self.queues, now, due) + Self::sweep_map(&self.topics, now, due);
        if removed > 0 {
            self.count.fetch_sub(removed, Ordering::Relaxed);
            self.stats
                .removed
                .fetch_add(removed as u64, Ordering::Relaxed);
        }
        removed
    }

    fn sweep_map<D: Idle>(map: &Map<D>, now: u64, due: u64) -> usize {
        let mut expired: Vec<Arc<str>> = Vec::new();
        for (name, slot) in map.read().iter() {
            // Held elsewhere (a subscription, a pending route, a delivery): in use.
            let unused = Arc::strong_count(&slot.dest) == 1 && slot.dest.is_idle();
            if !unused {
                slot.idle_since.store(0, Ordering::Relaxed);
                continue;
            }
            match slot.idle_since.load(Ordering::Relaxed) {
                0 => slot.idle_since.store(now, Ordering::Relaxed),
                since if now.saturating_sub(since) >= due => expired.push(name.clone()),
                _ => {}
            }
        }
        if expired.is_empty() {
            return 0;
        }
        let mut w = map.write();
        let mut removed = 0;
        for name in expired {
            let gone = match w.get(&name) {
                // Re-checked under the write lock: no lookup can clone it meanwhile.
                Some(s) => {
                    s.idle_since.load(Ordering::Relaxed) != 0
                        && Arc::strong_count(&s.dest) == 1
                        && s.dest.is_idle()
                }
                None => false,
            };
            if gone {
                w.remove(&name);
                removed += 1;
                tracing::debug!(destination = %name, "idle destination removed");
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct D(AtomicBool);
    impl Idle for D {
        fn is_idle(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn d(idle: bool) -> impl FnOnce(Arc<str>) -> Arc<D> {
        move |_| Arc::new(D(AtomicBool::new(idle)))
    }

    #[test]
    fn clients_are_capped_and_need_the_right_to_create() {
        let dir: Directory<D, D> = Directory::new(2, Duration::ZERO);
        assert!(dir.queue("/queue/a", Create::Client, d(true)).is_ok());
        assert_eq!(
            dir.queue("/queue/b", Create::Never, d(true)).err(),
            Some(Refused::NotFound)
        );
        assert!(dir.topic("/topic/b", Create::Client, d(true)).is_ok());
        assert_eq!(
            dir.queue("/queue/c", Create::Client, d(true)).err(),
            Some(Refused::Full { max: 2 })
        );
        // Existing ones are found; the broker itself may always create.
        assert!(dir.queue("/queue/a", Create::Never, d(true)).is_ok());
        assert!(dir.queue("/queue/DLQ.a", Create::Always, d(true)).is_ok());
        assert_eq!(dir.len(), 3);
        assert_eq!(dir.stats.refused_full.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn only_idle_unreferenced_destinations_are_swept_after_the_timeout() {
        let dir: Directory<D, D> = Directory::new(10, Duration::from_millis(1));
        let busy = dir.queue("/queue/busy", Create::Client, d(false)).unwrap();
        let held = dir.queue("/queue/held", Create::Client, d(true)).unwrap();
        drop(dir.queue("/queue/idle", Create::Client, d(true)).unwrap());
        drop(busy);
        // The first pass marks, a later one removes.
        assert_eq!(dir.sweep(), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(dir.sweep(), 1);
        assert!(!dir.exists("/queue/idle", true));
        assert!(dir.exists("/queue/busy", true));
        assert!(dir.exists("/queue/held", true), "a held destination stays");
        drop(held);
        assert_eq!(dir.len(), 2);
        assert_eq!(dir.stats.removed.load(Ordering::Relaxed), 1);
    }
}
