//! The standalone broker's lifecycle (no ZooKeeper): serve, and when the store fails, step down,
//! re-open the store from disk and serve again.
//!
//! ```text
//! start (open store, bind) ──▶ serve ──journal write/fsync failed──▶ step down ──▶ re-open ──▶ serve
//!                                ▲                                  (gate closed,   (retries,    │
//!                                └──────────────────────────────────  clients and    back-off)   │
//!                                                                     listeners                  │
//!                                                                     dropped, store closed) ◀───┘
//! ```
//!
//! Rules this module owns:
//! - **A failed journal is never written again.** The journal refuses every append once a write or
//!   fsync failed (an fsync is never retried: after a failed fsync the page cache no longer tells
//!   what is on disk). The broker's in-memory state (queues, acks applied in memory whose records
//!   were lost) is then not what the disk says, so it is thrown away with the broker instance: the
//!   gate closes (no RECEIPT, no MESSAGE leaves any more), listeners and connections are dropped,
//!   the journal is shut down (lock released) and a new broker recovers from what really is on
//!   disk. This is the fabric's step-down (`ha.rs`) without the election. Messages whose ACK was
//!   lost with the journal come back flagged `redelivered` (at-least-once).
//! - **Same addresses.** The listeners are bound again to the addresses the first start bound
//!   (also when configured with port 0), so clients and the ready file stay valid.
//! - **Retries only what can heal, with back-off.** Re-opening waits until the data directory's
//!   filesystem has room for two journal segments (`2 × journal.segment_bytes`: the one written
//!   and its spare; otherwise the broker would serve until the next write and fail again,
//!   dropping every client each time; it looks every 250 ms), and retries I/O errors with a
//!   back-off from 100 ms to 5 s, forever. The back-off also separates a failure from the next re-open, and keeps growing
//!   while terms end within a minute (a disk that fails every write does not make a busy loop).
//!   Meanwhile `/health` answers 503 `store failed: <error>` and `fabricmq_store_failed` is 1. A
//!   store that re-opens as damaged (a corrupt segment before the last, which needs `--salvage`),
//!   fenced, or a listener that cannot be bound again ends the process with an error (exit code
//!   1), for the operator or the supervisor.
//! - The first start is unchanged: any error there ends the process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{Role, Status};
use crate::config::BrokerConfig;
use crate::gate::Gate;
use crate::server::{self, StartError, StartOptions};
use crate::store::{Journal, StoreError};

/// How often the lifecycle looks at the journal's failed state while serving.
const WATCH_EVERY: Duration = Duration::from_millis(25);
/// First and longest pause between two attempts to re-open a failed store.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a broker waiting for free space looks at its filesystem (`statvfs`, cheap).
const SPACE_POLL: Duration = Duration::from_millis(250);
/// A term that served at least this long resets the back-off.
const STABLE_TERM: Duration = Duration::from_secs(60);

/// Why a standalone broker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// The first start failed.
    #[error(transparent)]
    Start(StartError),
    /// The store failed and could not be re-opened (not an error that waiting can heal).
    #[error("the store failed and cannot be re-opened: {source}")]
    Reopen {
        /// Cause.
        #[source]
        source: StartError,
    },
    /// The ready file could not be written.
    #[error("writing ready file {path}: {source}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What a standalone broker needs besides its configuration.
#[derive(Debug, Clone)]
pub struct StandaloneSettings {
    /// What the admin endpoint reports; kept current (role, serving broker, store failure).
    pub status: Arc<Status>,
    /// Written with `{"listeners": [...], "pid": N, "admin": "HOST:PORT"|null}` each time the
    /// broker starts serving (the listeners never change).
    pub ready_file: Option<PathBuf>,
}

/// Runs a standalone broker until `shutdown` is cancelled (then it stops gracefully). Returns an
/// error when the first start fails or a failed store cannot be re-opened.
pub async fn run(
    config: BrokerConfig,
    settings: StandaloneSettings,
    shutdown: CancellationToken,
) -> Result<(), StandaloneError> {
    let status = settings.status;
    let mut bound: Option<Vec<SocketAddr>> = None;
    let mut retry = RETRY_FIRST;
    // Why the last term ended (what /health reports while re-opening).
    let mut failure = String::new();
    loop {
        if bound.is_some() {
            // Re-opening on a disk that is still full would serve until the next write fails
            // (and drop every client again): first wait for room for two segments.
            let mut said = false;
            while let Some(free) = short_of_space(&config) {
                if !said {
                    let (needed, dir) = (needed_space(&config), config.data_dir.display());
                    warn!(free_bytes = free, needed_bytes = needed, %dir,
                        "not enough free space to re-open the store; waiting for it");
                    status.store_failed(&format!(
                        "{failure}; waiting for free space: {free} of {needed} bytes in {dir}"
                    ));
                    said = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(SPACE_POLL) => {}
                }
            }
        }
        let term = shutdown.child_token();
        let gate = Arc::new(Gate::always_open());
        let opts = StartOptions {
            gate: gate.clone(),
            addrs: bound.clone(),
            ..StartOptions::default()
        };
        let started = match server::start_with(config.clone(), opts, term.clone()).await {
            Ok(s) => s,
            Err(e) if bound.is_none() => return Err(StandaloneError::Start(e)),
            Err(e) if can_heal(&e) => {
                warn!(error = %e, retry_in_ms = retry.as_millis() as u64, "cannot re-open the store yet; retrying");
                status.store_failed(&e.to_string());
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
            Err(source) => {
                error!(error = %source, "the store failed and cannot be re-opened");
                return Err(StandaloneError::Reopen { source });
            }
        };
        let addrs: Vec<String> = started
            .local_listeners()
            .iter()
            .map(|(scheme, a)| format!("{scheme}://{a}"))
            .collect();
        if bound.is_some() {
            info!(listeners = ?addrs, "store re-opened from disk: serving again");
        }
        bound = Some(started.local_addrs());
        let serving_since = std::time::Instant::now();
        status.serving_standalone(&addrs, &started.broker);
        if let Some(path) = &settings.ready_file {
            write_ready_file(path, &addrs, &status)?;
        }
        let journal = started.broker.journal.clone();
        let serve = tokio::spawn(started.serve());
        let failed = watch(&journal, &shutdown).await;
        let Some(reason) = failed else {
            // Clean stop: `serve` drains (the term token is a child of `shutdown`).
            let _ = serve.await;
            return Ok(());
        };
        // Nothing more leaves this broker (no RECEIPT, no MESSAGE); clients and listeners go,
        // the journal is shut down and its lock released, then a new broker reads the disk.
        gate.close();
        status.store_failed(&reason);
        failure = reason.clone();
        error!(error = %reason, "the store failed: stepping down (clients dropped) to re-open it from disk");
        term.cancel();
        let _ = serve.await;
        status.set_role(Role::Recovering);
        if serving_since.elapsed() >= STABLE_TERM {
            retry = RETRY_FIRST;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Waits until the journal failed (returns why) or `shutdown` (returns `None`).
async fn watch(journal: &Journal, shutdown: &CancellationToken) -> Option<String> {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tick.tick() => {
                if journal.has_failed() {
                    return Some(failure_reason(journal).await);
                }
            }
        }
    }
}

/// Why a failed journal refuses appends (its first error).
pub async fn failure_reason(journal: &Journal) -> String {
    match journal.flush().await {
        Err(StoreError::Failed { reason }) => reason,
        Err(e) => e.to_string(),
        Ok(()) => "a journal write or fsync failed".into(),
    }
}

/// Free space a re-opened store needs: the segment being written and the spare the journal
/// prepares for the next one (`2 × journal.segment_bytes`). Less would be used up at once: the
/// failed journal's spare, removed when it closed, is often all that was freed.
fn needed_space(config: &BrokerConfig) -> u64 {
    config.journal.segment_bytes.0.saturating_mul(2)
}

/// The bytes free on the data directory's filesystem when fewer than [`needed_space`]; `None`
/// when there is room, or when the filesystem cannot say.
fn short_of_space(config: &BrokerConfig) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(&config.data_dir).ok()?;
    // Both are u64 on 64-bit Linux, narrower on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
    (free < needed_space(config)).then_some(free)
}

/// Whether re-opening may succeed later: I/O errors (the disk is still full, a transient error)
/// and the lock (not yet released by the instance that failed). A damaged or fenced store, or a
/// listener that cannot be bound, needs someone to act.
fn can_heal(e: &StartError) -> bool {
    matches!(
        e,
        StartError::Store {
            source: StoreError::Io { .. } | StoreError::Locked { .. } | StoreError::Failed { .. },
            ..
        }
    )
}

fn write_ready_file(
    path: &std::path::Path,
    listeners: &[String],
    status: &Status,
) -> Result<(), StandaloneError> {
    let admin = status.admin_addr().map(|a| a.to_string());
    let json = serde_json::json!({
        "listeners": listeners, "pid": std::process::id(), "admin": admin,
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json.to_string())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| StandaloneError::ReadyFile {
            path: path.to_path_buf(),
            source,
        })
}
