//! The HTTP admin endpoint of one broker: `/metrics`, `/health`, `/status`.
//!
//! - `GET /metrics`: Prometheus metrics in the OpenMetrics text format (role, epoch, connections,
//!   consumers, per-destination message counters, queue depth and bytes, journal writes, fsync
//!   latency and group-commit batch histograms, ZooKeeper session state, time as master).
//! - `GET /health`: `200` only while this broker serves clients (a fabric master with its gate
//!   open, or a standalone broker that finished start-up), `503` otherwise (slave, activating,
//!   suspended, stopping). A TCP load balancer checking it (haproxy `option httpchk GET /health`)
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
}

impl Role {
    /// Every role, in the order the metrics list them.
    pub const ALL: [Role; 7] = [
        Role::Starting,
        Role::Standalone,
        Role::Connecting,
        Role::Slave,
        Role::Activating,
        Role::Master,
        Role::Stopping,
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
    zookeeper: AtomicU8,
    admin_addr: OnceLock<SocketAddr>,
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
            }),
            master_terms: AtomicU64::new(0),
            zookeeper: AtomicU8::new(ZkState::Connecting.index()),
            admin_addr: OnceLock::new(),
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
        if let (Role::Master | Role::Standalone, Some(b)) = (role, &broker) {
            if b.shutdown.is_cancelled() {
                role = Role::Stopping;
            } else {
                serving = b.gate.is_open();
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

/// Serves the endpoint on `listener` in a task of its own, for the life of the runtime. Records
/// the bound address in `status`.
pub fn spawn(listener: TcpListener, status: Arc<Status>) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        status.set_admin_addr(addr);
        info!(%addr, "admin endpoint listening (/metrics, /health, /status)");
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector(status.clone())));
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
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "admin endpoint stopped");
        }
    })
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
        let Some(b) = &v.broker else {
            return Ok(());
        };
        encode_broker(&mut f, b)
    }
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
    f.gauge(
        "fabricmq_producer_ids",
        "Producer ids in the de-duplication table.",
        b.producer_ids() as u64,
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

        // A standalone broker has no ZooKeeper state.
        let text = exposition(&Status::standalone());
        assert!(!text.contains("zookeeper"), "{text}");
        assert!(
            text.contains("fabricmq_role{role=\"starting\"} 1\n"),
            "{text}"
        );
    }
}
