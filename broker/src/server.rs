//! Listeners and the broker's lifecycle: start (journal recovery, bind), serve, graceful stop.
//!
//! The accept loop only accepts: the TLS handshake (`stomp+ssl://` listeners), the CONNECT
//! handshake, authentication and the CONNECT timeout run in each connection's own task. The connection limit is a semaphore; a connection over the
//! limit gets one ERROR frame and is closed. One [`CancellationToken`] stops everything: listeners
//! stop accepting, connections finish the receipts already in flight and close, then the journal
//! finishes its appends, fsyncs and releases its lock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::connection;
use crate::gate::Gate;
use crate::store::{Journal, JournalConfig, LockMode, StoreError};
use crate::tls::TlsAcceptor;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal could not be opened or recovered.
    #[error("cannot open the message store in {dir}: {source}")]
    Store {
        /// Data directory.
        dir: std::path::PathBuf,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// The users file is unusable.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// A listener could not be bound.
    #[error("cannot listen on {url}: {source}")]
    Bind {
        /// Listener URL.
        url: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bound client listener; `tls` is set for `stomp+ssl://`.
struct Listener {
    url: String,
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
}

/// A started broker: bound listeners and recovered state, not yet serving.
pub struct Started {
    /// Shared state.
    pub broker: Arc<Broker>,
    listeners: Vec<Listener>,
    started: Instant,
}

impl Started {
    /// Addresses actually bound (with the port chosen when the URL said port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .collect()
    }

    /// Bound listeners as (scheme, address): `stomp` or `stomp+ssl` (TLS), with the port chosen
    /// when the URL said port 0. What the ready file and the master record publish.
    pub fn local_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|l| {
                let scheme = if l.tls.is_some() {
                    "stomp+ssl"
                } else {
                    "stomp"
                };
                Some((scheme, l.socket.local_addr().ok()?))
            })
            .collect()
    }

    /// Serves until the broker's shutdown token is cancelled, then stops gracefully.
    pub async fn serve(self) {
        let broker = self.broker;
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(broker.config.limits.max_connections));
        for Listener { url, socket, tls } in self.listeners {
            let addr = socket.local_addr().ok();
            info!(%url, addr = ?addr, tls = tls.is_some(), "listening");
            tracker.spawn(accept_loop(
                broker.clone(),
                socket,
                tls,
                permits.clone(),
                tracker.clone(),
            ));
        }
        info!(
            startup_ms = self.started.elapsed().as_millis() as u64,
            "broker ready"
        );
        broker.shutdown.cancelled().await;
        info!("shutting down: no new connections; finishing in-flight work");
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            warn!("connections did not finish within 10s; closing anyway");
        }
        let journal = broker.journal.clone();
        let temp = broker.context().temp.clone();
        let _ = tokio::task::spawn_blocking(move || {
            journal.shutdown();
            temp.shutdown();
        })
        .await;
        info!("broker stopped");
    }
}

/// How the fabric's HA lifecycle starts a master (a standalone broker uses the defaults).
pub struct StartOptions {
    /// The epoch this master won (0 = standalone: no fencing).
    pub epoch: u64,
    /// How to treat the data directory's lock.
    pub lock: LockMode,
    /// The serving gate.
    pub gate: Arc<Gate>,
    /// Directory of the temporary store (spilled non-persistent messages); `<data>/tmp` when
    /// `None`. Brokers sharing a data directory each need their own.
    pub temp_dir: Option<std::path::PathBuf>,
    /// Addresses to bind instead of those the configured listeners resolve to, one per listener
    /// in the same order (a standalone broker re-opening its store binds the ports it chose at
    /// its first start again, also for listeners configured with port 0).
    pub addrs: Option<Vec<SocketAddr>>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            epoch: 0,
            lock: LockMode::Required,
            gate: Arc::new(Gate::always_open()),
            temp_dir: None,
            addrs: None,
        }
    }
}

/// Opens the store, loads users and binds the listeners (standalone broker).
pub async fn start(
    config: BrokerConfig,
    shutdown: CancellationToken,
) -> Result<Started, StartError> {
    start_with(config, StartOptions::default(), shutdown).await
}

/// Opens the store with `opts` (epoch fencing, lock mode), loads users and binds the listeners.
pub async fn start_with(
    config: BrokerConfig,
    opts: StartOptions,
    shutdown: CancellationToken,
) -> Result<Started, StartError> {
    let started = Instant::now();
    let config = Arc::new(config);
    let auth = Authenticator::from_config(&config.auth)?;
    if auth.using_default_credentials() {
        warn!(
            "no users file configured: the default login admin/admin is active; set auth.users_file (see `mq-broker hash-password`)"
        );
    }
    let mut jc = JournalConfig::new(config.data_dir.join("journal"));
    jc.segment_bytes = config.journal.segment_bytes.0;
    jc.salvage = config.journal.salvage;
    jc.body_cache_bytes = config.limits.max_memory.0 / 2;
    jc.epoch = opts.epoch;
    jc.lock = opts.lock;
    let dir = jc.dir.clone();
    let (journal, recovered) = tokio::task::spawn_blocking(move || Journal::open(jc))
        .await
        .map_err(|e| StartError::Store {
            dir: dir.clone(),
            source: StoreError::Io {
                op: "recover",
                path: dir.clone(),
                source: std::io::Error::other(e.to_string()),
            },
        })?
        .map_err(|source| StartError::Store {
            dir: dir.clone(),
            source,
        })?;
    // The temporary store holds spilled non-persistent messages of this run only.
    let tmp_dir = opts
        .temp_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("tmp"));
    let _ = std::fs::remove_dir_all(&tmp_dir);
    let mut tc = JournalConfig::new(&tmp_dir);
    tc.segment_bytes = config.journal.segment_bytes.0;
    let (temp, _) = Journal::open(tc).map_err(|source| StartError::Store {
        dir: tmp_dir.clone(),
        source,
    })?;
    let r = &recovered.report;
    info!(
        messages = recovered.messages.len(),
        segments = r.segments,
        records = r.records,
        elapsed_ms = r.elapsed.as_millis() as u64,
        "journal recovered"
    );
    if let Some(t) = &r.truncated {
        warn!(file = %t.file.display(), offset = t.offset, dropped_bytes = t.dropped_bytes, reason = %t.reason, "torn journal tail truncated");
    }
    let mut listeners = Vec::new();
    for (i, url) in config.listeners().iter().enumerate() {
        let addr = match opts.addrs.as_ref().and_then(|a| a.get(i)) {
            Some(a) => *a,
            None => url.socket_addr().map_err(|e| StartError::Bind {
                url: url.to_string(),
                source: std::io::Error::other(e),
            })?,
        };
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                url: url.to_string(),
                source,
            })?;
        let tls = if url.tls {
            // validate() loaded [tls] whenever a listener uses it.
            let config = config.tls_server().ok_or_else(|| StartError::Bind {
                url: url.to_string(),
                source: std::io::Error::other("no [tls] configuration loaded"),
            })?;
            Some(TlsAcceptor::from(config.clone()))
        } else {
            None
        };
        listeners.push(Listener {
            url: url.to_string(),
            socket: l,
            tls,
        });
    }
    let broker = Broker::new(
        config,
        journal,
        temp,
        recovered,
        Arc::new(auth),
        opts.gate,
        shutdown,
    );
    broker.spawn_idle_sweeper();
    Ok(Started {
        broker,
        listeners,
        started,
    })
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let b = broker.clone();
                let tls = tls.clone();
                tracker.spawn(async move {
                    connection::serve(b, stream, peer, tls).await;
                    drop(permit);
                });
            }
            Err(_) => {
                warn!(%peer, limit = broker.config.limits.max_connections, "connection limit reached; refusing");
                tracker.spawn(connection::refuse(
                    stream,
                    tls.clone(),
                    "too many connections",
                ));
            }
        }
    }
}
