//! The password-check pool: a fixed number of OS threads that run argon2 verifications.
//!
//! Owns: the worker threads (started on first use), the bounded wait queue in front of them and
//! the per-address count of checks queued or running.
//!
//! Invariants:
//! - at most `threads` verifications run at once, so argon2's memory (19 MiB per check with the
//!   default parameters) is bounded by `threads` × that, whatever the number of clients;
//! - at most `queue` checks wait; one more is refused at once ([`PoolFull::Queue`]) without
//!   waiting or allocating;
//! - at most `per_address` checks of one client address are queued or running; one more is
//!   refused ([`PoolFull::Address`]), so one address cannot fill the queue and starve others;
//! - a queued check whose caller gave up (CONNECT deadline passed, connection closed) is skipped
//!   by the worker, never run.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

use super::stats::AuthStats;
use super::verify_hash;

/// Why a check was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFull {
    /// The wait queue (`auth.password_check_queue`) is full.
    Queue,
    /// This address already has `auth.password_checks_per_address` checks queued or running.
    Address,
}

struct Job {
    hash: String,
    password: String,
    reply: oneshot::Sender<bool>,
}

/// A bounded pool of password-check threads. Cheap to share; threads start on first use.
pub struct Pool {
    threads: usize,
    queue: usize,
    per_address: usize,
    stats: Arc<AuthStats>,
    sender: OnceLock<SyncSender<Job>>,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .field("queue", &self.queue)
            .field("per_address", &self.per_address)
            .finish()
    }
}

/// A check's place in the pool: releases the address's slot when dropped (also when the caller
/// gives up).
pub struct Ticket<'a> {
    pool: &'a Pool,
    addr: IpAddr,
    reply: oneshot::Receiver<bool>,
}

impl Ticket<'_> {
    /// Waits for the verification's result (false if the pool dropped it).
    pub async fn result(&mut self) -> bool {
        (&mut self.reply).await.unwrap_or(false)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut m = self.pool.lock_addresses();
        if let Some(n) = m.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

impl Pool {
    /// A pool of `threads` workers with `queue` waiting places, `per_address` checks per address.
    pub fn new(threads: usize, queue: usize, per_address: usize, stats: Arc<AuthStats>) -> Pool {
        Pool {
            threads: threads.max(1),
            queue,
            per_address: per_address.max(1),
            stats,
            sender: OnceLock::new(),
            by_address: Mutex::new(HashMap::new()),
        }
    }

    fn lock_addresses(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.by_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sender(&self) -> &SyncSender<Job> {
        self.sender.get_or_init(|| {
            // A zero-capacity channel is a rendezvous: then only idle workers take checks.
            let (tx, rx) = sync_channel::<Job>(self.queue);
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..self.threads {
                let rx = rx.clone();
                let stats = self.stats.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("mq-passwd-{i}"))
                    .spawn(move || worker(&rx, &stats));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a password-check thread");
                }
            }
            tx
        })
    }

    /// Queues a check of `password` against `hash` for a client at `addr`, or says why not.
    pub fn submit(
        &self,
        addr: IpAddr,
        hash: String,
        password: String,
    ) -> Result<Ticket<'_>, PoolFull> {
        {
            let mut m = self.lock_addresses();
            let n = m.entry(addr).or_insert(0);
            if *n >= self.per_address {
                self.stats
                    .checks_refused_address
                    .fetch_add(1, Ordering::Relaxed);
                return Err(PoolFull::Address);
            }
            *n += 1;
        }
        let (reply, rx) = oneshot::channel();
        let ticket = Ticket {
            pool: self,
            addr,
            reply: rx,
        };
        self.stats.checks_queued.fetch_add(1, Ordering::Relaxed);
        match self.sender().try_send(Job {
            hash,
            password,
            reply,
        }) {
            Ok(()) => Ok(ticket),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.checks_queued.fetch_sub(1, Ordering::Relaxed);
                self.stats
                    .checks_refused_busy
                    .fetch_add(1, Ordering::Relaxed);
                Err(PoolFull::Queue)
            }
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, stats: &AuthStats) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        stats.checks_queued.fetch_sub(1, Ordering::Relaxed);
        if job.reply.is_closed() {
            // The client gave up (deadline, closed connection): nobody waits for this check.
            stats.checks_abandoned.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.checks_running.fetch_add(1, Ordering::Relaxed);
        let ok = verify_hash(&job.hash, &job.password);
        stats.checks_running.fetch_sub(1, Ordering::Relaxed);
        stats.checks_total.fetch_add(1, Ordering::Relaxed);
        let _ = job.reply.send(ok);
    }
}
