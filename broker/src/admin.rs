//! The HTTP admin endpoint of one broker: `/metrics`, `/health`, `/status`.
//!
//! - `GET /metrics`: Prometheus metrics in the OpenMetrics text format (role, epoch, connections,
//!   consumers, per-destination message counters, queue depth and bytes, journal writes, fsync
//!   latency and group-commit batch histograms, ZooKeeper session state, time as master).
//! - `GET /health`: `200` only while this broker serves clients (a fabric master with its gate
//!   open, or a standalone broker that finished start-up), `503` otherwise (slave, activating,
//!   suspended, stopping, or the store failed: the body then says `store failed: <error>`). A TCP load balancer checking it (haproxy `option httpchk GET /health`)
//!   sends plain STOMP clients to the master of a group.
//! - `GET /status`: JSON with what `mq-fabric cluster-list` shows for this broker plus connection
//!   counts.
//!
//! The endpoint starts before the broker opens its store and keeps running while the broker is a
//! slave. It never blocks the broker: handlers read atomics and take the same short `std` locks
//! the broker takes (a queue's lock to read its depth, the journal's state lock for its segment
//! count), never across an `.await`. The HA lifecycle ([`crate::ha`]) and the standalone start-up
//! (`mq-broker`'s `main`) report their state into a shared [`Status`].
//!
//! Counters belong to the broker instance of the current term: a container that becomes master
//! again starts them from zero (Prometheus reads that as a counter reset).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::message::now_ms;
use crate::store::histogram::HistogramSnapshot;
use crate::store::Journal;

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listening socket could not be bound.
    #[error("cannot bind the admin endpoint to {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What this broker is doing, as `/status` and the `fabricmq_role` metric report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Process started; the store is not open yet (standalone).
    Starting,
    /// A standalone broker serving clients.
    Standalone,
    /// Fabric: connecting to ZooKeeper (not a member of the group).
    Connecting,
    /// Fabric: a member waiting for its turn; no client listener open.
    Slave,
    /// Fabric: first in line, opening the store and binding listeners.
    Activating,
    /// Fabric: the group's master.
    Master,
    /// Draining and closing (shutdown, hand-over or stepping down).
    Stopping,
    /// Standalone: the store failed (a journal write or fsync); re-opening it from disk.
    Recovering,
}

impl Role {
    /// Every role, in the order the metrics list them.
    pub const ALL: [Role; 8] = [
        Role::Starting,
        Role::Standalone,
        Role::Connecting,
        Role::Slave,
        Role::Activating,
        Role::Master,
        Role::Stopping,
        Role::Recovering,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Standalone => "standalone",
            Role::Connecting => "connecting",
            Role::Slave => "slave",
            Role::Activating => "activating",
            Role::Master => "master",
            Role::Stopping => "stopping",
            Role::Recovering => "recovering",
        }
    }
}

/// The ZooKeeper session of a fabric container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZkState {
    /// No session yet (connecting, or between two sessions).
    Connecting,
    /// Connected; the session is alive.
    Connected,
    /// Connection lost; the session may still be alive (a master's gate is closed).
    Disconnected,
    /// The session expired.
    Expired,
    /// The session was closed by this process.
    Closed,
    /// Authentication failed.
    AuthFailed,
}

impl ZkState {
    /// Every state, in the order the metrics list them.
    pub const ALL: [ZkState; 6] = [
        ZkState::Connecting,
        ZkState::Connected,
        ZkState::Disconnected,
        ZkState::Expired,
        ZkState::Closed,
        ZkState::AuthFailed,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ZkState::Connecting => "connecting",
            ZkState::Connected => "connected",
            ZkState::Disconnected => "disconnected",
            ZkState::Expired => "expired",
            ZkState::Closed => "closed",
            ZkState::AuthFailed => "auth_failed",
        }
    }

    fn from_index(i: u8) -> ZkState {
        Self::ALL
            .get(usize::from(i))
            .copied()
            .unwrap_or(ZkState::Connecting)
    }

    fn index(self) -> u8 {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as u8
    }
}

impl From<fabricmq_registry::SessionEvent> for ZkState {
    fn from(e: fabricmq_registry::SessionEvent) -> Self {
        use fabricmq_registry::SessionEvent as E;
        match e {
            E::Connected => ZkState::Connected,
            E::Disconnected => ZkState::Disconnected,
            E::Expired => ZkState::Expired,
            E::Closed => ZkState::Closed,
            E::AuthFailed => ZkState::AuthFailed,
        }
    }
}

/// A fabric container's identity.
#[derive(Debug, Clone)]
struct Fabric {
    container: String,
    group: String,
    profile: Option<String>,
}

#[derive(Debug)]
struct Inner {
    role: Role,
    /// Epoch of the current term (activating or master).
    epoch: Option<u64>,
    /// Client listeners of the serving broker.
    services: Vec<String>,
    /// When the current term as master started (ms since the Unix epoch).
    master_since_ms: Option<u64>,
    /// The same on the monotonic clock.
    term_started: Option<Instant>,
    /// Time as master in terms that ended.
    master_time: Duration,
    /// The serving broker (standalone, or master of the current term).
    broker: Option<Weak<Broker>>,
    /// Why the store failed, until a broker serves again on a re-opened store.
    store_error: Option<String>,
}

/// The broker's state as the admin endpoint reports it, shared with the HA lifecycle (or the
/// standalone start-up) that keeps it current. Every method is cheap and never waits.
#[derive(Debug)]
pub struct Status {
    fabric: Option<Fabric>,
    started: Instant,
    started_ms: u64,
    inner: Mutex<Inner>,
    master_terms: AtomicU64,
    /// Times the store failed (a journal write or fsync) in this process.
    store_failures: AtomicU64,
    zookeeper: AtomicU8,
    admin_addr: OnceLock<SocketAddr>,
    admin_stats: Arc<AdminStats>,
}

impl Status {
    fn new(fabric: Option<Fabric>) -> Arc<Status> {
        Arc::new(Status {
            fabric,
            started: Instant::now(),
            started_ms: now_ms(),
            inner: Mutex::new(Inner {
                role: Role::Starting,
                epoch: None,
                services: Vec::new(),
                master_since_ms: None,
                term_started: None,
                master_time: Duration::ZERO,
                broker: None,
                store_error: None,
            }),
            master_terms: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            zookeeper: AtomicU8::new(ZkState::Connecting.index()),
            admin_addr: OnceLock::new(),
            admin_stats: Arc::default(),
        })
    }

    /// The status of a standalone broker (role `starting` until [`Status::serving_standalone`]).
    pub fn standalone() -> Arc<Status> {
        Self::new(None)
    }

    /// The status of a fabric container.
    pub fn fabric(container: &str, group: &str, profile: Option<&str>) -> Arc<Status> {
        Self::new(Some(Fabric {
            container: container.to_owned(),
            group: group.to_owned(),
            profile: profile.map(str::to_owned),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the role. Leaving `master` (or `standalone`) ends the term: its time is added to the
    /// time as master and the broker is forgotten.
    pub fn set_role(&self, role: Role) {
        let mut s = self.lock();
        if role == s.role {
            return;
        }
        if let Some(t) = s.term_started.take() {
            s.master_time += t.elapsed();
        }
        s.master_since_ms = None;
        s.broker = None;
        s.services.clear();
        if role != Role::Activating {
            s.epoch = None;
        }
        s.role = role;
    }

    /// Fabric: first in line with `epoch`, opening the store.
    pub fn activating(&self, epoch: u64) {
        self.set_role(Role::Activating);
        self.lock().epoch = Some(epoch);
    }

    /// Fabric: serving as master of `epoch` since `since_ms` (the master record's `since`).
    pub fn serving_master(
        &self,
        epoch: u64,
        services: &[String],
        since_ms: u64,
        broker: &Arc<Broker>,
    ) {
        let mut s = self.lock();
        if let Some(t) = s.term_started.take() {
            s.master_time += t.elapsed();
        }
        s.role = Role::Master;
        s.epoch = Some(epoch);
        s.services = services.to_vec();
        s.master_since_ms = Some(since_ms);
        s.term_started = Some(Instant::now());
        s.broker = Some(Arc::downgrade(broker));
        s.store_error = None;
        drop(s);
        self.master_terms.fetch_add(1, Ordering::Relaxed);
    }

    /// Standalone: serving on `services`.
    pub fn serving_standalone(&self, services: &[String], broker: &Arc<Broker>) {
        let mut s = self.lock();
        s.role = Role::Standalone;
        s.services = services.to_vec();
        s.master_since_ms = Some(now_ms());
        s.term_started = Some(Instant::now());
        s.broker = Some(Arc::downgrade(broker));
        s.store_error = None;
    }

    /// The store failed with `reason` (a journal write or fsync): `/health` answers 503 with it
    /// until a broker serves again on a re-opened store (`serving_standalone`/`serving_master`).
    /// Counted once per failure (attempts to re-open only update the reason).
    pub fn store_failed(&self, reason: &str) {
        if self.lock().store_error.replace(reason.to_owned()).is_none() {
            self.store_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fabric: the ZooKeeper session's state.
    pub fn set_zookeeper(&self, state: ZkState) {
        self.zookeeper.store(state.index(), Ordering::Relaxed);
    }

    /// Records the address the admin endpoint is bound to.
    pub fn set_admin_addr(&self, addr: SocketAddr) {
        let _ = self.admin_addr.set(addr);
    }

    /// The address the admin endpoint is bound to, once it is.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr.get().copied()
    }

    /// The role as reported: `stopping` once the serving broker began its shutdown.
    pub fn role(&self) -> Role {
        self.view().role
    }

    /// Whether this broker serves clients now: a fabric master whose gate is open (ZooKeeper
    /// connected, its heart beating) or a started standalone broker, not shutting down.
    pub fn is_serving(&self) -> bool {
        self.view().serving
    }

    /// A consistent reading of the role and the serving broker.
    fn view(&self) -> View {
        let s = self.lock();
        let broker = s.broker.as_ref().and_then(Weak::upgrade);
        let mut role = s.role;
        let mut serving = false;
        let mut store_error = s.store_error.clone();
        if let (Role::Master | Role::Standalone, Some(b)) = (role, &broker) {
            if b.journal.has_failed() {
                // Before the lifecycle noticed: a broker that cannot store does not serve.
                store_error.get_or_insert_with(|| "a journal write or fsync failed".into());
            }
            if b.shutdown.is_cancelled() {
                role = Role::Stopping;
            } else {
                serving = b.gate.is_open() && store_error.is_none();
            }
        }
        let master_for = s.term_started.map(|t| t.elapsed());
        View {
            role,
            serving,
            epoch: s.epoch,
            services: s.services.clone(),
            master_since_ms: s.master_since_ms,
            master_for,
            master_time: s.master_time + master_for.unwrap_or_default(),
            broker,
            store_error,
        }
    }

    /// What `/status` returns.
    pub fn report(&self) -> StatusReport {
        let v = self.view();
        let (open, total, consumers) = match &v.broker {
            Some(b) => (
                b.stats.connections_open.load(Ordering::Relaxed) as u64,
                b.stats.connections_total.load(Ordering::Relaxed),
                consumer_count(b),
            ),
            None => (0, 0, 0),
        };
        let f = self.fabric.as_ref();
        StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            mode: if f.is_some() { "fabric" } else { "standalone" },
            container: f.map(|f| f.container.clone()),
            group: f.map(|f| f.group.clone()),
            profile: f.and_then(|f| f.profile.clone()),
            role: v.role,
            serving: v.serving,
            epoch: v.epoch,
            services: v.services,
            master_since: v.master_since_ms,
            master_for_s: v.master_for.map(|d| d.as_secs_f64()),
            master_terms: self.master_terms.load(Ordering::Relaxed),
            zookeeper: f.map(|_| self.zk_state()),
            started: self.started_ms,
            uptime_s: self.started.elapsed().as_secs_f64(),
            pid: std::process::id(),
            connections: Connections { open, total },
            consumers,
            admin: self.admin_addr().map(|a| a.to_string()),
            store_error: v.store_error,
        }
    }

    fn zk_state(&self) -> ZkState {
        ZkState::from_index(self.zookeeper.load(Ordering::Relaxed))
    }
}

struct View {
    role: Role,
    serving: bool,
    epoch: Option<u64>,
    services: Vec<String>,
    master_since_ms: Option<u64>,
    master_for: Option<Duration>,
    master_time: Duration,
    broker: Option<Arc<Broker>>,
    store_error: Option<String>,
}

/// Connection counts in [`StatusReport`].
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    /// Client connections open now.
    pub open: u64,
    /// Client connections accepted in this term.
    pub total: u64,
}

/// The `/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Broker version.
    pub version: &'static str,
    /// `fabric` or `standalone`.
    pub mode: &'static str,
    /// Fabric: this container's name.
    pub container: Option<String>,
    /// Fabric: its group.
    pub group: Option<String>,
    /// Fabric: the profile it runs, if any.
    pub profile: Option<String>,
    /// What the broker is doing.
    pub role: Role,
    /// Whether it serves clients now (what `/health` answers).
    pub serving: bool,
    /// Epoch of the current term (fabric master or activating).
    pub epoch: Option<u64>,
    /// Client listeners while serving (`stomp://host:port`).
    pub services: Vec<String>,
    /// When the current term as master (or the standalone broker's service) began, in ms since
    /// the Unix epoch.
    pub master_since: Option<u64>,
    /// Seconds since then.
    pub master_for_s: Option<f64>,
    /// Terms as master this process started.
    pub master_terms: u64,
    /// Fabric: the ZooKeeper session.
    pub zookeeper: Option<ZkState>,
    /// When the process started, in ms since the Unix epoch.
    pub started: u64,
    /// Seconds since the process started.
    pub uptime_s: f64,
    /// Process id.
    pub pid: u32,
    /// Client connections.
    pub connections: Connections,
    /// Subscriptions (queue consumers and topic subscribers).
    pub consumers: u64,
    /// Address of this admin endpoint.
    pub admin: Option<String>,
    /// Why the store failed, while the broker cannot store (then it does not serve).
    pub store_error: Option<String>,
}

fn consumer_count(b: &Broker) -> u64 {
    let q: usize = b.queues().iter().map(|q| q.consumer_count()).sum();
    let t: usize = b.topics().iter().map(|t| t.subscriber_count()).sum();
    (q + t) as u64
}

/// Binds the admin endpoint's socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

#[derive(Clone)]
struct App {
    status: Arc<Status>,
    registry: Arc<Registry>,
}

/// The admin endpoint's own limits (`[admin]`), separate from the client listeners'.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// `admin.max_connections`.
    pub max_connections: usize,
    /// `admin.header_read_timeout`.
    pub header_read_timeout: Duration,
    /// `admin.request_timeout`.
    pub request_timeout: Duration,
}

impl AdminLimits {
    /// The limits of an `[admin]` section.
    pub fn from_config(a: &crate::config::AdminSettings) -> AdminLimits {
        AdminLimits {
            max_connections: a.max_connections,
            header_read_timeout: a.header_read_timeout.0,
            request_timeout: a.request_timeout.0,
        }
    }
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self::from_config(&crate::config::AdminSettings::default())
    }
}

/// Counters of the admin endpoint's own connections (in `/metrics`).
#[derive(Debug, Default)]
struct AdminStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_limit: AtomicU64,
    header_timeouts: AtomicU64,
    request_timeouts: AtomicU64,
    accept_errors: AtomicU64,
}

/// Serves the endpoint on `listener` in a task of its own, for the life of the runtime. Records
/// the bound address in `status`.
///
/// The accept loop is its own (not `axum::serve`) to bound what a client can hold: at most
/// `limits.max_connections` connections (one more is answered `503` naming the key and closed
/// within a second, at most `max_connections` such at a time, so held connections cannot exhaust
/// the descriptors the STOMP listeners need), each
/// closed when a request's header does not arrive within `limits.header_read_timeout` (which
/// also bounds idle keep-alive), each request answered `503` after `limits.request_timeout`.
pub fn spawn(
    listener: TcpListener,
    status: Arc<Status>,
    limits: AdminLimits,
) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        status.set_admin_addr(addr);
        info!(%addr, max_connections = limits.max_connections, "admin endpoint listening (/metrics, /health, /status)");
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector(status.clone())));
    let stats = status.admin_stats.clone();
    let app = App {
        status,
        registry: Arc::new(registry),
    };
    let router = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/status", get(status_json))
        .with_state(app);
    tokio::spawn(accept_loop(listener, router, stats, limits))
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    stats: Arc<AdminStats>,
    limits: AdminLimits,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Refused connections are closed within a second; at most as many at a time as served ones
    // (beyond that they are dropped at once), so descriptors stay within twice the cap.
    let refusing = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let busy = format!(
        "admin endpoint connection limit reached (admin.max_connections = {})\n",
        limits.max_connections
    );
    let busy = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{busy}",
        busy.len()
    );
    let mut last_warn: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE/ENFILE and the like: wait a little rather than spin.
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    warn!(error = %e, "admin endpoint cannot accept a connection");
                    last_warn = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused_limit.fetch_add(1, Ordering::Relaxed);
            // Never waits: the socket is new, its send buffer empty.
            let _ = stream.try_write(busy.as_bytes());
            match refusing.clone().try_acquire_owned() {
                // Read the request for a moment before closing, so the client sees the 503
                // rather than a reset (closing with unread input sends RST).
                Ok(p) => {
                    tokio::spawn(async move {
                        let _p = p;
                        let mut s = stream;
                        let _ = s.shutdown().await;
                        let mut sink = [0u8; 4096];
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            let mut total = 0;
                            while total < 64 * 1024 {
                                match s.read(&mut sink).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => total += n,
                                }
                            }
                        })
                        .await;
                    });
                }
                Err(_) => drop(stream),
            }
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let router = router.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let s2 = stats.clone();
            let svc = hyper::service::service_fn(
                move |req: axum::http::Request<hyper::body::Incoming>| {
                    let router = router.clone();
                    let stats = s2.clone();
                    async move {
                        use tower::ServiceExt;
                        match tokio::time::timeout(limits.request_timeout, router.oneshot(req))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => {
                                stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
                                Ok((
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "request not answered within admin.request_timeout\n",
                                )
                                    .into_response())
                            }
                        }
                    }
                },
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = http.serve_connection(io, svc).await {
                if e.is_timeout() {
                    stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                }
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

async fn index() -> &'static str {
    "fabricmq broker admin endpoint: /metrics /health /status\n"
}

/// The OpenMetrics text format's content type (Prometheus asks for it first).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(app): State<App>) -> Response {
    let mut body = String::with_capacity(16 << 10);
    match prometheus_client::encoding::text::encode(&mut body, &app.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn health(State(app): State<App>) -> Response {
    let v = app.status.view();
    let body = match (v.role, v.epoch) {
        _ if !v.serving && v.store_error.is_some() => {
            format!(
                "store failed: {}\n",
                v.store_error.as_deref().unwrap_or_default()
            )
        }
        (Role::Master, Some(e)) if v.serving => format!("master epoch {e}\n"),
        (Role::Master, _) if !v.serving => "master, suspended\n".to_string(),
        (role, _) => format!("{}\n", role.as_str()),
    };
    let code = if v.serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CACHE_CONTROL, "no-store")], body).into_response()
}

async fn status_json(State(app): State<App>) -> Response {
    match serde_json::to_string_pretty(&app.status.report()) {
        Ok(mut text) => {
            text.push('\n');
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Reads every metric at scrape time from the broker's atomics.
#[derive(Debug)]
struct BrokerCollector(Arc<Status>);

type Labels = Vec<(&'static str, String)>;

/// One metric family being written.
struct Family<'a, 'b> {
    enc: &'a mut DescriptorEncoder<'b>,
}

impl Family<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, v: u64) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        m.encode_counter::<NoLabelSet, _, u64>(&v, None)
    }

    fn counter_f64(&mut self, name: &str, help: &str, v: f64) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        m.encode_counter::<NoLabelSet, _, u64>(&v, None)
    }

    fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        v: V,
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        m.encode_gauge(&v)
    }

    fn info(&mut self, name: &str, help: &str, labels: &Labels) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Info)?;
        m.encode_info(labels)
    }

    fn counters(&mut self, name: &str, help: &str, rows: &[(Labels, u64)]) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in rows {
            m.encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
        Ok(())
    }

    fn gauges(&mut self, name: &str, help: &str, rows: &[(Labels, i64)]) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in rows {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
        Ok(())
    }

    /// A histogram family; the recorded integers divided by `divisor` are in the metric's unit
    /// (a division, not a multiplication by its inverse, so that bounds print as `0.00005`).
    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels, HistogramSnapshot)],
        divisor: f64,
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in rows {
            // `counts` has one entry more than `bounds`: the +Inf bucket. Buckets and count come
            // from the same reading, so `+Inf` always equals `count`.
            let buckets: Vec<(f64, u64)> = h
                .bounds
                .iter()
                .map(|&b| b as f64 / divisor)
                .chain(std::iter::once(f64::INFINITY))
                .zip(h.counts.iter().copied())
                .collect();
            m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                h.sum as f64 / divisor,
                h.count(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

fn dest(name: &str, kind: &'static str) -> Labels {
    vec![("destination", name.to_owned()), ("type", kind.to_owned())]
}

fn store_label(name: &'static str) -> Labels {
    vec![("store", name.to_owned())]
}

impl Collector for BrokerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let status = &self.0;
        let v = status.view();
        let mut f = Family { enc: &mut enc };

        f.info(
            "fabricmq_build",
            "Broker version.",
            &vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
        )?;
        f.gauge(
            "fabricmq_uptime_seconds",
            "Seconds since the broker process started.",
            status.started.elapsed().as_secs_f64(),
        )?;
        let roles: Vec<(Labels, i64)> = Role::ALL
            .iter()
            .map(|r| {
                (
                    vec![("role", r.as_str().to_owned())],
                    i64::from(*r == v.role),
                )
            })
            .collect();
        f.gauges(
            "fabricmq_role",
            "What the broker is doing: 1 for the current role, 0 for the others.",
            &roles,
        )?;
        f.gauge(
            "fabricmq_serving",
            "1 while the broker serves clients (fabric master with its gate open, or started standalone broker); what /health answers 200 for.",
            i64::from(v.serving),
        )?;
        f.gauge(
            "fabricmq_epoch",
            "Epoch of the current term as master (0 when not master, and for a standalone broker).",
            v.epoch.unwrap_or(0),
        )?;
        f.gauge(
            "fabricmq_master_uptime_seconds",
            "Seconds since the current term as master (or the standalone broker's service) began; 0 when not serving.",
            v.master_for.map_or(0.0, |d| d.as_secs_f64()),
        )?;
        f.counter_f64(
            "fabricmq_master_seconds",
            "Seconds this process has been master (or a serving standalone broker), over every term.",
            v.master_time.as_secs_f64(),
        )?;
        f.counter(
            "fabricmq_master_terms",
            "Terms as master this process started (failovers and hand-overs it took part in).",
            status.master_terms.load(Ordering::Relaxed),
        )?;
        f.gauge(
            "fabricmq_store_failed",
            "1 while the store has failed (a journal write or fsync: disk full, I/O error) and no broker serves on a re-opened store yet; /health answers 503 meanwhile.",
            i64::from(v.store_error.is_some()),
        )?;
        f.counter(
            "fabricmq_store_failures",
            "Times the store failed in this process (each makes the broker step down and re-open it).",
            status.store_failures.load(Ordering::Relaxed),
        )?;
        if status.fabric.is_some() {
            let zk = status.zk_state();
            let states: Vec<(Labels, i64)> = ZkState::ALL
                .iter()
                .map(|s| (vec![("state", s.as_str().to_owned())], i64::from(*s == zk)))
                .collect();
            f.gauges(
                "fabricmq_zookeeper_session_state",
                "The ZooKeeper session: 1 for the current state, 0 for the others.",
                &states,
            )?;
        }
        encode_admin(&mut f, &status.admin_stats)?;
        let Some(b) = &v.broker else {
            return Ok(());
        };
        encode_broker(&mut f, b)?;
        encode_auth(&mut f, b.auth.stats())
    }
}

fn encode_admin(f: &mut Family<'_, '_>, s: &AdminStats) -> std::fmt::Result {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    f.gauge(
        "fabricmq_admin_connections_open",
        "Admin endpoint connections open now (at most admin.max_connections).",
        r(&s.open),
    )?;
    f.counter(
        "fabricmq_admin_connections",
        "Admin endpoint connections accepted.",
        r(&s.accepted),
    )?;
    f.counter(
        "fabricmq_admin_connections_refused",
        "Admin endpoint connections refused with 503 because admin.max_connections were open.",
        r(&s.refused_limit),
    )?;
    f.counter(
        "fabricmq_admin_header_timeouts",
        "Admin endpoint connections closed because a request header did not arrive within admin.header_read_timeout.",
        r(&s.header_timeouts),
    )?;
    f.counter(
        "fabricmq_admin_request_timeouts",
        "Admin endpoint requests answered 503 after admin.request_timeout.",
        r(&s.request_timeouts),
    )?;
    f.counter(
        "fabricmq_admin_accept_errors",
        "Admin endpoint accept() failures (e.g. out of file descriptors).",
        r(&s.accept_errors),
    )
}

fn encode_auth(f: &mut Family<'_, '_>, s: &crate::auth::stats::AuthStats) -> std::fmt::Result {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    f.gauge(
        "fabricmq_auth_password_checks_running",
        "Password checks (argon2) running now (at most auth.password_check_threads).",
        r(&s.checks_running),
    )?;
    f.gauge(
        "fabricmq_auth_password_checks_queued",
        "Password checks waiting for a thread now (at most auth.password_check_queue).",
        r(&s.checks_queued),
    )?;
    f.counter(
        "fabricmq_auth_password_checks",
        "Password checks run.",
        r(&s.checks_total),
    )?;
    f.counters(
        "fabricmq_auth_password_checks_rejected",
        "Logins refused with `server busy` before any password check, by the limit reached.",
        &[
            (
                vec![("limit", "auth.password_check_queue".to_owned())],
                r(&s.checks_refused_busy),
            ),
            (
                vec![("limit", "auth.password_checks_per_address".to_owned())],
                r(&s.checks_refused_address),
            ),
        ],
    )?;
    f.counter(
        "fabricmq_auth_password_checks_abandoned",
        "Queued password checks dropped unrun because the client gave up.",
        r(&s.checks_abandoned),
    )?;
    f.counter(
        "fabricmq_auth_backoff_delays",
        "Login attempts delayed by the back-off after failures (auth.failure_backoff).",
        r(&s.backoff_delays),
    )?;
    f.counter_f64(
        "fabricmq_auth_backoff_delay_seconds",
        "Total back-off delay applied to login attempts.",
        r(&s.backoff_delay_ms) as f64 / 1000.0,
    )?;
    f.counter(
        "fabricmq_auth_backoff_refused",
        "Login attempts refused with `too many failed logins` (back-off past the CONNECT deadline).",
        r(&s.backoff_refused),
    )?;
    f.gauges(
        "fabricmq_auth_backoff_entries",
        "Keys in the back-off tables (each at most auth.failure_table_size).",
        &[
            (
                vec![("table", "address".to_owned())],
                r(&s.backoff_addresses) as i64,
            ),
            (
                vec![("table", "login".to_owned())],
                r(&s.backoff_logins) as i64,
            ),
        ],
    )?;
    f.counter(
        "fabricmq_auth_backoff_evictions",
        "Back-off entries evicted to keep the tables within auth.failure_table_size.",
        r(&s.backoff_evictions),
    )?;
    f.counter(
        "fabricmq_auth_log_lines_suppressed",
        "Failed-login log lines not written (over auth.failure_log_per_second).",
        r(&s.log_lines_suppressed),
    )
}

/// What clients hold against the `[quotas]` and how often a quota refused (issue 10 item 6).
fn encode_quotas(f: &mut Family<'_, '_>, b: &Broker) -> std::fmt::Result {
    f.gauge(
        "fabricmq_memory_spilled_header_bytes",
        "Header bytes of queue messages whose body is on disk (they stay in memory); producers wait while this exceeds limits.max_memory.",
        b.memory().spilled(),
    )?;
    f.gauge(
        "fabricmq_transaction_bytes",
        "Bytes buffered in open transactions, all connections (at most limits.max_memory; quotas.max_transaction_bytes per connection).",
        b.memory().transactions(),
    )?;
    let d = b.destinations();
    f.gauge(
        "fabricmq_destinations",
        "Queues plus topics held (one set of per-destination series each, so this bounds the size of /metrics).",
        d.len() as u64,
    )?;
    f.gauge(
        "fabricmq_destinations_limit",
        "quotas.max_destinations: clients cannot create more.",
        b.config.quotas.max_destinations as u64,
    )?;
    f.counter(
        "fabricmq_destinations_created",
        "Destinations created (by clients, journal recovery and dead-letter moves).",
        d.stats.created.load(Ordering::Relaxed),
    )?;
    f.counter(
        "fabricmq_destinations_removed",
        "Idle destinations removed after quotas.destination_idle_timeout.",
        d.stats.removed.load(Ordering::Relaxed),
    )?;
    f.gauge(
        "fabricmq_users_with_subscriptions",
        "Users holding subscriptions now (each at most quotas.max_subscriptions_per_user).",
        b.quotas.users_with_subscriptions() as u64,
    )?;
    let rows: Vec<(Labels, u64)> = b
        .quotas
        .refusals()
        .into_iter()
        .map(|(q, n)| (vec![("quota", q.key().to_owned())], n))
        .collect();
    f.counters(
        "fabricmq_quota_refusals",
        "Requests refused by a quota (the label is the configuration key named in the ERROR).",
        &rows,
    )
}

fn encode_broker(f: &mut Family<'_, '_>, b: &Broker) -> std::fmt::Result {
    let s = &b.stats;
    f.gauge(
        "fabricmq_connections_open",
        "Client connections open now.",
        s.connections_open.load(Ordering::Relaxed) as u64,
    )?;
    f.counter(
        "fabricmq_connections",
        "Client connections accepted.",
        s.connections_total.load(Ordering::Relaxed),
    )?;
    f.counter(
        "fabricmq_auth_failures",
        "Logins refused.",
        s.auth_failures.load(Ordering::Relaxed),
    )?;
    f.counter(
        "fabricmq_protocol_errors",
        "Connections closed because of a protocol error.",
        s.protocol_errors.load(Ordering::Relaxed),
    )?;
    f.counter(
        "fabricmq_duplicates_dropped",
        "SENDs acknowledged but not enqueued again (producer id and sequence already seen).",
        s.duplicates_dropped.load(Ordering::Relaxed),
    )?;
    let (producer_ids, evicted, expired) = b.producer_ids();
    f.gauge(
        "fabricmq_producer_ids",
        "Producer ids (per user) in the de-duplication table.",
        producer_ids as u64,
    )?;
    f.gauge(
        "fabricmq_producer_ids_limit_per_user",
        "producers.max_per_user: past it a user's least recently used producer id is forgotten.",
        b.config.producers.max_per_user as u64,
    )?;
    f.counter(
        "fabricmq_producer_ids_evicted",
        "Producer ids forgotten because their user had producers.max_per_user ids.",
        evicted,
    )?;
    f.counter(
        "fabricmq_producer_ids_expired",
        "Producer ids forgotten after producers.idle_expiry without a SEND.",
        expired,
    )?;
    f.gauge(
        "fabricmq_memory_used_bytes",
        "Bytes counted against limits.max_memory: bodies held in memory, headers of messages whose body is on disk, SENDs buffered in transactions.",
        b.memory().used(),
    )?;
    encode_quotas(f, b)?;
    f.gauge(
        "fabricmq_memory_limit_bytes",
        "limits.max_memory: past it, bodies are read back from disk.",
        b.config.limits.max_memory.0,
    )?;

    // Destinations, sorted by name so that scrapes are stable.
    let mut queues = b.queues();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let mut topics = b.topics();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut consumers = Vec::with_capacity(queues.len() + topics.len());
    let mut depth = Vec::with_capacity(queues.len());
    let mut inflight = Vec::with_capacity(queues.len());
    let mut bytes = Vec::with_capacity(queues.len());
    for q in &queues {
        let labels = dest(&q.name, "queue");
        let (ready, held) = q.depth();
        consumers.push((labels.clone(), q.consumer_count() as i64));
        depth.push((labels.clone(), (ready + held) as i64));
        inflight.push((labels.clone(), held as i64));
        bytes.push((labels, q.stats.bytes.load(Ordering::Relaxed) as i64));
    }
    for t in &topics {
        consumers.push((dest(&t.name, "topic"), t.subscriber_count() as i64));
    }
    let total: i64 = consumers.iter().map(|(_, n)| n).sum();
    f.gauge(
        "fabricmq_consumers",
        "Subscriptions: queue consumers plus topic subscribers.",
        total,
    )?;
    f.gauges(
        "fabricmq_destination_consumers",
        "Subscriptions per destination.",
        &consumers,
    )?;
    f.gauges(
        "fabricmq_queue_messages",
        "Messages in the queue, ready and in flight (unacknowledged).",
        &depth,
    )?;
    f.gauges(
        "fabricmq_queue_inflight_messages",
        "Messages delivered and not yet acknowledged.",
        &inflight,
    )?;
    f.gauges(
        "fabricmq_queue_bytes",
        "Body bytes of the messages in the queue, ready and in flight.",
        &bytes,
    )?;
    type Pick = fn(&crate::destination::DestinationStats) -> &AtomicU64;
    let counters: [(&str, &str, Pick); 7] = [
        (
            "fabricmq_messages_in",
            "Messages accepted by the destination.",
            |s| &s.enqueued,
        ),
        (
            "fabricmq_messages_out",
            "Messages delivered to consumers (redeliveries included).",
            |s| &s.delivered,
        ),
        (
            "fabricmq_messages_acked",
            "Queue messages acknowledged (consumed).",
            |s| &s.acked,
        ),
        ("fabricmq_messages_redelivered", "Redeliveries.", |s| {
            &s.redelivered
        }),
        (
            "fabricmq_messages_dead_lettered",
            "Messages moved to a dead-letter queue.",
            |s| &s.dead_lettered,
        ),
        (
            "fabricmq_messages_expired",
            "Messages that expired before delivery.",
            |s| &s.expired,
        ),
        (
            "fabricmq_slow_consumers_closed",
            "Topic subscribers disconnected for being too slow.",
            |s| &s.slow_consumers_closed,
        ),
    ];
    for (name, help, pick) in counters {
        let rows: Vec<(Labels, u64)> = queues
            .iter()
            .map(|q| (dest(&q.name, "queue"), pick(&q.stats)))
            .chain(
                topics
                    .iter()
                    .map(|t| (dest(&t.name, "topic"), pick(&t.stats))),
            )
            .map(|(l, a)| (l, a.load(Ordering::Relaxed)))
            .collect();
        f.counters(name, help, &rows)?;
    }

    // The journal (persistent messages) and the temporary store (spilled non-persistent ones).
    let stores: [(&'static str, &Journal); 2] =
        [("journal", &b.journal), ("temp", &b.context().temp)];
    let stats: Vec<_> = stores.iter().map(|(n, j)| (*n, j.stats())).collect();
    let rows = |pick: fn(&crate::store::JournalStats) -> u64| -> Vec<(Labels, u64)> {
        stats
            .iter()
            .map(|(n, s)| (store_label(n), pick(s)))
            .collect()
    };
    f.counters(
        "fabricmq_journal_records",
        "Records appended (one per append: a message, a batch of acks, a transaction).",
        &rows(|s| s.records),
    )?;
    f.counters(
        "fabricmq_journal_written_bytes",
        "Bytes written to segment files.",
        &rows(|s| s.bytes),
    )?;
    f.counters(
        "fabricmq_journal_fsyncs",
        "fdatasyncs of segment files.",
        &rows(|s| s.fsyncs),
    )?;
    f.counters(
        "fabricmq_journal_segments_deleted",
        "Segment files deleted once all their messages were acknowledged.",
        &rows(|s| s.segments_deleted),
    )?;
    let g = |pick: fn(&crate::store::JournalStats) -> i64| -> Vec<(Labels, i64)> {
        stats
            .iter()
            .map(|(n, s)| (store_label(n), pick(s)))
            .collect()
    };
    f.gauges(
        "fabricmq_journal_segments",
        "Segment files present.",
        &g(|s| s.segments_live as i64),
    )?;
    f.gauges(
        "fabricmq_journal_live_messages",
        "Messages the store holds (written, not yet acknowledged).",
        &g(|s| s.live_messages as i64),
    )?;
    f.gauges(
        "fabricmq_journal_failed",
        "1 once a write or fsync failed (the store refuses appends).",
        &g(|s| i64::from(s.failed)),
    )?;
    f.gauges(
        "fabricmq_journal_fenced",
        "1 once a newer master fenced this store.",
        &g(|s| i64::from(s.fenced)),
    )?;
    let backlog: Vec<(Labels, i64)> = stores
        .iter()
        .map(|(n, j)| (store_label(n), j.backlog_bytes() as i64))
        .collect();
    f.gauges(
        "fabricmq_journal_backlog_bytes",
        "Bytes queued for the writer thread and not yet written.",
        &backlog,
    )?;
    let fsync: Vec<(Labels, HistogramSnapshot)> = stores
        .iter()
        .map(|(n, j)| (store_label(n), j.fsync_latency()))
        .collect();
    f.histograms(
        "fabricmq_journal_fsync_seconds",
        "Latency of the group-commit fdatasyncs.",
        &fsync,
        1e6,
    )?;
    let batches: Vec<(Labels, HistogramSnapshot)> = stores
        .iter()
        .map(|(n, j)| (store_label(n), j.batch_sizes()))
        .collect();
    f.histograms(
        "fabricmq_journal_batch_records",
        "Records made durable by one group-commit fdatasync.",
        &batches,
        1.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(status: &Arc<Status>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(BrokerCollector(status.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn a_slave_reports_its_role_and_session_but_serves_nothing() {
        let st = Status::fabric("broker1", "default", Some("mq"));
        assert_eq!(st.role(), Role::Starting);
        st.set_role(Role::Slave);
        st.set_zookeeper(ZkState::Connected);
        assert!(!st.is_serving());
        let r = st.report();
        assert_eq!(r.role, Role::Slave);
        assert_eq!(r.container.as_deref(), Some("broker1"));
        assert_eq!(r.zookeeper, Some(ZkState::Connected));
        assert_eq!(r.epoch, None);
        st.activating(4);
        assert_eq!(st.report().epoch, Some(4));
        assert!(!st.is_serving(), "activating is not serving");

        let text = exposition(&st);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("fabricmq_role{role=\"activating\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("fabricmq_role{role=\"master\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("fabricmq_epoch 4\n"), "{text}");
        assert!(text.contains("fabricmq_serving 0\n"), "{text}");
        assert!(
            text.contains("fabricmq_zookeeper_session_state{state=\"connected\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("fabricmq_master_terms_total 0\n"), "{text}");
        assert!(!text.contains("fabricmq_connections"), "no broker: {text}");

        // A store failure is counted once, whatever the attempts to re-open it, and reported
        // until a broker serves again.
        let st = Status::standalone();
        st.set_role(Role::Recovering);
        st.store_failed("journal I/O error: No space left on device");
        st.store_failed("journal I/O error: still no space");
        let r = st.report();
        assert!(!r.serving);
        assert_eq!(
            r.store_error.as_deref(),
            Some("journal I/O error: still no space")
        );
        let text = exposition(&st);
        assert!(text.contains("fabricmq_store_failed 1\n"), "{text}");
        assert!(text.contains("fabricmq_store_failures_total 1\n"), "{text}");
        assert!(
            text.contains("fabricmq_role{role=\"recovering\"} 1\n"),
            "{text}"
        );

        // A standalone broker has no ZooKeeper state.
        let text = exposition(&Status::standalone());
        assert!(!text.contains("zookeeper"), "{text}");
        assert!(
            text.contains("fabricmq_role{role=\"starting\"} 1\n"),
            "{text}"
        );
    }
}
