//! Counters of the authentication guard (password-check pool, back-off, log limiter), read by
//! `/metrics` at scrape time. Plain atomics: updating them never waits.

use std::sync::atomic::AtomicU64;

/// Authentication counters and gauges.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Gauge: password checks running on the pool's threads now.
    pub checks_running: AtomicU64,
    /// Gauge: password checks waiting for a thread now.
    pub checks_queued: AtomicU64,
    /// Password checks run (argon2 verifications).
    pub checks_total: AtomicU64,
    /// Checks refused because the wait queue was full (`auth.password_check_queue`).
    pub checks_refused_busy: AtomicU64,
    /// Checks refused because the address had `auth.password_checks_per_address` in the pool.
    pub checks_refused_address: AtomicU64,
    /// Queued checks dropped unrun because the client gave up.
    pub checks_abandoned: AtomicU64,
    /// Attempts delayed by the back-off.
    pub backoff_delays: AtomicU64,
    /// Total back-off delay applied, in milliseconds.
    pub backoff_delay_ms: AtomicU64,
    /// Attempts refused because their back-off would pass the CONNECT deadline.
    pub backoff_refused: AtomicU64,
    /// Gauge: addresses in the back-off table.
    pub backoff_addresses: AtomicU64,
    /// Gauge: login names in the back-off table.
    pub backoff_logins: AtomicU64,
    /// Back-off entries evicted to keep the tables within `auth.failure_table_size`.
    pub backoff_evictions: AtomicU64,
    /// Failure log lines not written (over `auth.failure_log_per_second`).
    pub log_lines_suppressed: AtomicU64,
}
