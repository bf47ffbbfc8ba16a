//! Back-off after failed logins, per client address and per login name.
//!
//! Owns two bounded tables (addresses, login names) of recent failures. After `n` failures of a
//! key, the next password check for that key is not attempted before `base × 2^(n-1)` (capped at
//! `max`) has passed since the last failure. An address's attempts are also spaced out from each
//! other (each reserves the next slot), so a flood of concurrent wrong logins from one address
//! costs one argon2 check per back-off period. A login name's back-off applies to attempts from
//! addresses that have failed themselves (and is not stacked): guessing one account from many
//! addresses is slowed after each address's first failure, while the account's user, from an
//! address without failures, is not held back by the attack. An attempt whose slot lies beyond
//! its CONNECT deadline is refused at once.
//!
//! Invariants:
//! - each table holds at most `capacity` keys: inserting into a full table first drops entries
//!   idle for longer than `forget_after`, then the least recently failed tenth, so an attacker
//!   cycling through addresses or names cannot grow it (at worst they evict each other);
//! - IPv6 addresses are keyed by their /64 prefix (one host usually owns a whole /64);
//! - a successful login clears the keys it used; a key idle for `forget_after` is forgotten.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::stats::AuthStats;

/// Back-off settings.
#[derive(Debug, Clone, Copy)]
pub struct BackoffSettings {
    /// Delay after the first failure (`auth.failure_backoff`).
    pub base: Duration,
    /// Longest delay (`auth.failure_backoff_max`).
    pub max: Duration,
    /// Keys per table (`auth.failure_table_size`).
    pub capacity: usize,
    /// A key without failures for this long is forgotten (`auth.failure_forget_after`).
    pub forget_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// The earliest time the next attempt of this key may run.
    next_allowed: Instant,
    last_seen: Instant,
}

#[derive(Debug)]
struct Table<K> {
    map: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new() -> Self {
        Table {
            map: HashMap::new(),
        }
    }

    fn live(&mut self, key: &K, now: Instant, forget_after: Duration) -> Option<&mut Entry> {
        let stale = self
            .map
            .get(key)
            .is_some_and(|e| now.saturating_duration_since(e.last_seen) > forget_after);
        if stale {
            self.map.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }

    /// Makes room for one more key; returns how many were evicted (not counting stale ones).
    fn make_room(&mut self, now: Instant, s: &BackoffSettings) -> u64 {
        if self.map.len() < s.capacity {
            return 0;
        }
        self.map
            .retain(|_, e| now.saturating_duration_since(e.last_seen) <= s.forget_after);
        if self.map.len() < s.capacity {
            return 0;
        }
        let mut ages: Vec<Instant> = self.map.values().map(|e| e.last_seen).collect();
        let drop = (s.capacity / 10).max(1).min(ages.len());
        let (_, cutoff, _) = ages.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let before = self.map.len();
        self.map.retain(|_, e| e.last_seen > cutoff);
        (before - self.map.len()) as u64
    }
}

/// What the throttle decided for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Check now.
    Go,
    /// Check after waiting this long.
    Wait(Duration),
    /// The wait would pass the deadline: refuse now; `retry_after` is the earliest useful retry.
    Refuse {
        /// When a retry could be checked.
        retry_after: Duration,
    },
}

/// The key of an address: IPv4 as is, IPv6 by its /64 prefix.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Per-address and per-login back-off. Every method takes one short lock and never waits.
#[derive(Debug)]
pub struct Throttle {
    settings: BackoffSettings,
    stats: Arc<AuthStats>,
    inner: Mutex<(Table<IpAddr>, Table<String>)>,
}

impl Throttle {
    /// An empty throttle.
    pub fn new(settings: BackoffSettings, stats: Arc<AuthStats>) -> Throttle {
        Throttle {
            settings,
            stats,
            inner: Mutex::new((Table::new(), Table::new())),
        }
    }

    fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(30);
        self.settings
            .base
            .saturating_mul(1u32 << shift)
            .min(self.settings.max)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Table<IpAddr>, Table<String>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides when an attempt by `login` from `ip` may be checked, given `remaining` time before
    /// its deadline, and reserves that slot (so concurrent attempts of one key queue up behind it).
    pub fn admit(&self, ip: IpAddr, login: &str, remaining: Duration) -> Decision {
        let now = Instant::now();
        let forget = self.settings.forget_after;
        let mut guard = self.lock();
        let (addrs, users) = &mut *guard;
        let addr = address_key(ip);
        let mut slot = now;
        let a = addrs.live(&addr, now, forget).copied();
        // A login name's back-off holds back only addresses that have failed themselves: the
        // rightful user, from an address without failures, is not delayed by an attack on the name.
        let u = match a {
            Some(_) => users.live(&login.to_string(), now, forget).copied(),
            None => None,
        };
        for e in [a, u].into_iter().flatten() {
            slot = slot.max(e.next_allowed);
        }
        let wait = slot.saturating_duration_since(now);
        if wait > remaining {
            self.stats.backoff_refused.fetch_add(1, Ordering::Relaxed);
            return Decision::Refuse { retry_after: wait };
        }
        // Reserve the address's slot: its next attempt waits one more back-off period, so
        // concurrent attempts from one address are spaced out. A login name's slot is not
        // reserved (only waited for), so a name costs a failing address at most `max` of delay.
        if a.is_some() {
            if let Some(e) = addrs.map.get_mut(&addr) {
                e.next_allowed = slot + self.delay(e.failures);
                e.last_seen = now;
            }
        }
        if wait.is_zero() {
            return Decision::Go;
        }
        self.stats.backoff_delays.fetch_add(1, Ordering::Relaxed);
        self.stats
            .backoff_delay_ms
            .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
        Decision::Wait(wait)
    }

    /// Records a failed attempt.
    pub fn failed(&self, ip: IpAddr, login: &str) {
        let now = Instant::now();
        let s = self.settings;
        let mut guard = self.lock();
        let (addrs, users) = &mut *guard;
        let evicted = record(addrs, address_key(ip), now, &s, |n| self.delay(n))
            + record(users, login.to_string(), now, &s, |n| self.delay(n));
        if evicted > 0 {
            self.stats
                .backoff_evictions
                .fetch_add(evicted, Ordering::Relaxed);
        }
        self.stats
            .backoff_addresses
            .store(addrs.map.len() as u64, Ordering::Relaxed);
        self.stats
            .backoff_logins
            .store(users.map.len() as u64, Ordering::Relaxed);
    }

    /// Records a successful login: its address and name start afresh.
    pub fn succeeded(&self, ip: IpAddr, login: &str) {
        let mut guard = self.lock();
        let (addrs, users) = &mut *guard;
        let a = addrs.map.remove(&address_key(ip)).is_some();
        let u = users.map.remove(login).is_some();
        if a || u {
            self.stats
                .backoff_addresses
                .store(addrs.map.len() as u64, Ordering::Relaxed);
            self.stats
                .backoff_logins
                .store(users.map.len() as u64, Ordering::Relaxed);
        }
    }
}

fn record<K: Hash + Eq + Clone>(
    t: &mut Table<K>,
    key: K,
    now: Instant,
    s: &BackoffSettings,
    delay: impl Fn(u32) -> Duration,
) -> u64 {
    if let Some(e) = t.live(&key, now, s.forget_after) {
        e.failures = e.failures.saturating_add(1);
        // The next attempt waits the new, longer delay from now (or from its reserved slot).
        e.next_allowed = e.next_allowed.max(now + delay(e.failures));
        e.last_seen = now;
        return 0;
    }
    let evicted = t.make_room(now, s);
    t.map.insert(
        key,
        Entry {
            failures: 1,
            next_allowed: now + delay(1),
            last_seen: now,
        },
    );
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(capacity: usize) -> Throttle {
        Throttle::new(
            BackoffSettings {
                base: Duration::from_secs(1),
                max: Duration::from_secs(8),
                capacity,
                forget_after: Duration::from_secs(600),
            },
            Arc::new(AuthStats::default()),
        )
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn failures_space_out_attempts_exponentially_up_to_the_cap() {
        let t = throttle(100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(t.admit(ip, "bob", LONG), Decision::Go);
        t.failed(ip, "bob");
        // About 1 s after one failure (allow for the time the test itself takes).
        let Decision::Wait(w) = t.admit(ip, "bob", LONG) else {
            panic!("expected a wait")
        };
        assert!(
            w <= Duration::from_secs(1) && w > Duration::from_millis(500),
            "{w:?}"
        );
        for _ in 0..10 {
            t.failed(ip, "bob");
        }
        let Decision::Wait(w) = t.admit(ip, "carol", LONG) else {
            panic!("the address backs off for any name")
        };
        assert!(
            w <= Duration::from_secs(8) + Duration::from_secs(1),
            "{w:?}"
        );
        // A short deadline: refused rather than waiting past it.
        assert!(matches!(
            t.admit(ip, "bob", Duration::from_millis(10)),
            Decision::Refuse { .. }
        ));
        // Another address is not affected, even for the name (it has no failures of its own).
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(t.admit(other, "dave", LONG), Decision::Go);
        assert_eq!(t.admit(other, "bob", LONG), Decision::Go);
        // Success clears both keys.
        t.succeeded(ip, "bob");
        assert_eq!(t.admit(ip, "bob", LONG), Decision::Go);
    }

    #[test]
    fn an_attacked_name_holds_back_failing_addresses_only() {
        let t = throttle(100);
        for i in 0..50u32 {
            t.failed(IpAddr::V4(std::net::Ipv4Addr::from(i)), "bob");
        }
        // The user, from an address without failures, is not delayed.
        assert_eq!(
            t.admit("10.9.9.9".parse().unwrap(), "bob", LONG),
            Decision::Go
        );
        // A failing address waits for the name too (not stacked: at most the cap).
        let failing = IpAddr::V4(std::net::Ipv4Addr::from(7u32));
        t.failed(failing, "carol");
        match t.admit(failing, "bob", LONG) {
            Decision::Wait(w) => assert!(w <= Duration::from_secs(8), "{w:?}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn tables_stay_bounded_under_many_keys() {
        let t = throttle(50);
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            t.failed(ip, &format!("user{i}"));
        }
        let g = t.lock();
        assert!(g.0.map.len() <= 50 && g.1.map.len() <= 50);
        drop(g);
        assert!(t.stats.backoff_evictions.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn ipv6_hosts_share_their_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
