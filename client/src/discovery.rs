//! Broker discovery: where a fabric group's master is, kept current from ZooKeeper.
//!
//! A `discovery:fabric:<group>?zk=...` URL names a master/slave group instead of a broker. The
//! group's master publishes a *master record* in ZooKeeper (container, epoch, client endpoints
//! such as `stomp://10.0.0.5:61613`; see `fabricmq_registry::MasterRecord`). [`Discovery`] reads
//! that record through the registry crate's `watch_master` stream and publishes it, and the broker
//! endpoints parsed from it, on two `tokio::sync::watch` channels:
//!
//! * a change of the record (a new master, a master gone) is pushed the moment ZooKeeper reports
//!   it (a watch, no polling);
//! * a lost connection to ZooKeeper is ridden out by the registry session (watches are re-armed);
//!   when the session expires, or closes, a new session is opened and the record re-read;
//! * while ZooKeeper is unreachable the last known endpoints stay published (the broker may well
//!   still be serving; the failover transport finds out by connecting), and this is logged once per
//!   outage (a `warn` line naming the endpoints kept), with an `info` line when ZooKeeper answers
//!   again.
//!
//! One background task per [`Discovery`] does this; it stops (and closes its ZooKeeper session)
//! when the last clone of the [`Discovery`] is dropped.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabricmq_registry::{MasterRecord, Registry, RegistryConfig, RegistryError, SessionEvent};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use crate::error::ClientError;
use crate::failover::Endpoint;
use crate::url::{validate_group, validate_zk_root, BrokerUrl, UrlError};

/// First delay between attempts to open a new ZooKeeper session.
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
/// Longest delay between attempts to open a new ZooKeeper session.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

/// How the discovery's link to ZooKeeper stands (see [`Discovery::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryStatus {
    /// Following the master record over the ZooKeeper session `session` (its id).
    Connected {
        /// The ZooKeeper session id.
        session: i64,
    },
    /// The connection to ZooKeeper is lost; the session may still be alive and the registry
    /// client is reconnecting. The last known endpoints are kept.
    Disconnected,
    /// The session expired or closed; a new one is being opened (ZooKeeper may be unreachable).
    /// The last known endpoints are kept.
    SessionLost,
}

/// Where a fabric group's master is, from the registry (`watch_master`), kept current: survives
/// ZooKeeper reconnects and session expiry (builds a new registry session); when ZooKeeper is
/// unreachable it keeps the last known endpoints and logs that once.
///
/// Cheap to clone; clones share one background task and one ZooKeeper session, which end when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Discovery {
    shared: Arc<Shared>,
}

struct Shared {
    group: String,
    endpoints: watch::Receiver<Vec<(String, u16)>>,
    master: watch::Receiver<Option<MasterRecord>>,
    status: watch::Receiver<DiscoveryStatus>,
    /// Cancels the background task when the last clone goes.
    _stop: DropGuard,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("group", &self.shared.group)
            .field("endpoints", &*self.shared.endpoints.borrow())
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Discovery {
    /// Starts discovering the master of `group` through the ZooKeeper ensemble `zk`
    /// (`host:port[,host:port...][/chroot]`), with the registry under `zk_root` (default
    /// `/fabric`). Registry timeouts are the registry's defaults (session 4 s).
    ///
    /// Returns once the group's master record has been read, so [`endpoints`](Self::endpoints)
    /// holds the current answer (possibly empty: no master right now). Fails with
    /// [`ClientError::Url`] for a bad group, connect string or root, and with
    /// [`ClientError::Discovery`] when ZooKeeper cannot be reached (bounded by the registry's
    /// connect timeout, 5 s) or does not answer the first read.
    pub async fn start(
        group: &str,
        zk: &str,
        zk_root: Option<&str>,
    ) -> Result<Discovery, ClientError> {
        let config = RegistryConfig::parse(zk).map_err(|e| UrlError::BadOptionValue {
            option: "zk",
            value: zk.to_owned(),
            reason: e.to_string(),
        })?;
        // Reading needs no credentials on a secured fabric; given ones are used all the same.
        let credentials =
            fabricmq_registry::ZkCredentials::from_env_or_file(None).map_err(|e| {
                ClientError::Discovery {
                    message: e.to_string(),
                }
            })?;
        let config = config.with_credentials(credentials);
        let config = match zk_root {
            Some(root) => {
                validate_zk_root(root).map_err(|reason| UrlError::BadOptionValue {
                    option: "zkRoot",
                    value: root.to_owned(),
                    reason: reason.to_owned(),
                })?;
                config.with_root(root)
            }
            None => config,
        };
        Discovery::start_with_config(group, config).await
    }

    /// Like [`start`](Self::start) for a `discovery:` [`BrokerUrl`]: its group, `zk` and `zkRoot`.
    /// A URL without `zk` (and not completed by [`BrokerUrl::with_default_zk`]) is an error, as
    /// is any other kind of URL.
    pub async fn from_url(url: &BrokerUrl) -> Result<Discovery, ClientError> {
        match url {
            BrokerUrl::Discovery {
                group,
                zk: Some(zk),
                zk_root,
                ..
            } => Discovery::start(group, zk, zk_root.as_deref()).await,
            BrokerUrl::Discovery { zk: None, .. } => Err(ClientError::Discovery {
                message: format!(
                    "no ZooKeeper for {url}: add zk=host:port to the URL, or give --zk or FABRIC_ZK"
                ),
            }),
            _ => Err(ClientError::Discovery {
                message: format!("{url} is not a discovery:fabric:<group> URL"),
            }),
        }
    }

    /// Like [`start`](Self::start) with a full registry configuration (session, connect and
    /// operation timeouts): for tests and tools that tune them.
    pub async fn start_with_config(
        group: &str,
        config: RegistryConfig,
    ) -> Result<Discovery, ClientError> {
        validate_group(group)?;
        let servers = config.to_string();
        let registry = Registry::connect(config.clone())
            .await
            .map_err(|e| registry_error(&servers, group, e))?;
        let mut masters = Box::pin(registry.watch_master(group));
        let wait = config.op_timeout.saturating_mul(2);
        let first = match tokio::time::timeout(wait, masters.next()).await {
            Ok(Some(first)) => first,
            Ok(None) => {
                registry.close().await;
                return Err(ClientError::Discovery {
                    message: format!(
                        "ZooKeeper session at {servers} ended before the master record of group {group} was read"
                    ),
                });
            }
            Err(_) => {
                registry.close().await;
                return Err(ClientError::Discovery {
                    message: format!(
                        "ZooKeeper at {servers} did not answer the read of group {group}'s master record within {wait:?}"
                    ),
                });
            }
        };
        let endpoints = endpoints_of(first.as_ref());
        info!(
            %group,
            zk = %servers,
            master = first.as_ref().map(|r| r.container.as_str()),
            ?endpoints,
            "discovery started"
        );
        let (endpoints_tx, endpoints_rx) = watch::channel(endpoints);
        let (master_tx, master_rx) = watch::channel(first);
        let (status_tx, status_rx) = watch::channel(DiscoveryStatus::Connected {
            session: registry.session_id(),
        });
        let stop = CancellationToken::new();
        let task = Task {
            group: group.to_owned(),
            config,
            endpoints: endpoints_tx,
            master: master_tx,
            status: status_tx,
            stop: stop.clone(),
            outage: None,
        };
        tokio::spawn(task.run(registry, masters));
        Ok(Discovery {
            shared: Arc::new(Shared {
                group: group.to_owned(),
                endpoints: endpoints_rx,
                master: master_rx,
                status: status_rx,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// Current master endpoints `(host, port)` parsed from the master record's services
    /// (`stomp://`, `tcp://`, or TLS `stomp+ssl://`; see [`master`](Self::master) for which is
    /// which); empty when there is no master. Changes are pushed the moment the
    /// record changes; while ZooKeeper is unreachable the last known value stays.
    pub fn endpoints(&self) -> watch::Receiver<Vec<(String, u16)>> {
        self.shared.endpoints.clone()
    }

    /// The group's current master record (`None`: no master), with the same update rules as
    /// [`endpoints`](Self::endpoints).
    pub fn master(&self) -> watch::Receiver<Option<MasterRecord>> {
        self.shared.master.clone()
    }

    /// How the link to ZooKeeper stands (for diagnostics and tests).
    pub fn status(&self) -> watch::Receiver<DiscoveryStatus> {
        self.shared.status.clone()
    }

    /// The group being discovered.
    pub fn group(&self) -> &str {
        &self.shared.group
    }
}

/// Maps a registry failure at start-up to the client's error.
fn registry_error(servers: &str, group: &str, e: RegistryError) -> ClientError {
    match e {
        RegistryError::Config { input, reason } => ClientError::Url(UrlError::BadOptionValue {
            option: "zk",
            value: input,
            reason,
        }),
        other => ClientError::Discovery {
            message: format!("cannot discover group {group} through ZooKeeper {servers}: {other}"),
        },
    }
}

/// The broker endpoints of a master record as `(host, port)`: see [`dial_endpoints`].
fn endpoints_of(record: Option<&MasterRecord>) -> Vec<(String, u16)> {
    dial_endpoints(record)
        .into_iter()
        .map(|e| (e.host, e.port))
        .collect()
}

/// The endpoints the failover transport dials for a master record: every service that parses
/// as a `tcp://`, `stomp://` or (TLS) `stomp+ssl://`/`ssl://` URL (an unbracketed IPv6 host,
/// `stomp://::1:61613`, is accepted too), in the record's order; others are skipped with a
/// warning.
pub(crate) fn dial_endpoints(record: Option<&MasterRecord>) -> Vec<Endpoint> {
    let Some(record) = record else {
        return Vec::new();
    };
    record
        .services
        .iter()
        .filter_map(|service| match parse_service(service) {
            Some(endpoint) => Some(endpoint),
            None => {
                warn!(%service, container = %record.container, "master record: unusable service URL skipped");
                None
            }
        })
        .collect()
}

fn parse_service(service: &str) -> Option<Endpoint> {
    match service.parse::<BrokerUrl>() {
        Ok(BrokerUrl::Tcp { host, port, tls }) => Some(Endpoint { host, port, tls }),
        Ok(_) => None,
        Err(_) => {
            // `stomp://::1:61613`: an IPv6 address written without brackets.
            let (scheme, authority) = service.split_once("://")?;
            let (host, port) = authority.rsplit_once(':')?;
            let host: std::net::Ipv6Addr = host.parse().ok()?;
            match format!("{scheme}://[{host}]:{port}").parse::<BrokerUrl>() {
                Ok(BrokerUrl::Tcp { host, port, tls }) => Some(Endpoint { host, port, tls }),
                _ => None,
            }
        }
    }
}

/// One registry session and its master-record stream.
type Session = (Registry, BoxStream<'static, Option<MasterRecord>>);

/// The background task: follows the master record, session after session.
struct Task {
    group: String,
    config: RegistryConfig,
    endpoints: watch::Sender<Vec<(String, u16)>>,
    master: watch::Sender<Option<MasterRecord>>,
    status: watch::Sender<DiscoveryStatus>,
    stop: CancellationToken,
    /// When the current ZooKeeper outage began (`Some` once it was logged).
    outage: Option<Instant>,
}

impl Task {
    async fn run(
        mut self,
        registry: Registry,
        masters: impl Stream<Item = Option<MasterRecord>> + Send + 'static,
    ) {
        let mut current = Some((registry, masters.boxed()));
        let mut delay = RECONNECT_DELAY_MIN;
        loop {
            let (registry, masters) = match current.take() {
                Some(session) => session,
                None => match self.open_session().await {
                    Some(Ok(session)) => {
                        delay = RECONNECT_DELAY_MIN;
                        session
                    }
                    Some(Err(e)) => {
                        self.zookeeper_unreachable(&e.to_string());
                        tokio::select! {
                            _ = self.stop.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(RECONNECT_DELAY_MAX);
                        continue;
                    }
                    None => return,
                },
            };
            let ended = self.follow(&registry, masters).await;
            registry.close().await;
            if !ended {
                debug!(group = %self.group, "discovery stopped");
                return;
            }
            self.set_status(DiscoveryStatus::SessionLost);
            info!(
                group = %self.group,
                session = %format_args!("{:#x}", registry.session_id()),
                "ZooKeeper session ended; opening a new one (the last known endpoints are kept meanwhile)"
            );
        }
    }

    /// Opens a new session and starts watching; `None` when stopped meanwhile.
    async fn open_session(&self) -> Option<Result<Session, RegistryError>> {
        let connect = Registry::connect(self.config.clone());
        let registry = tokio::select! {
            _ = self.stop.cancelled() => return None,
            r = connect => r,
        };
        Some(registry.map(|registry| {
            let masters = registry.watch_master(&self.group).boxed();
            (registry, masters)
        }))
    }

    /// Follows one session's master stream. Returns `true` when the session ended (a new one is
    /// needed), `false` when the discovery was stopped.
    async fn follow(
        &mut self,
        registry: &Registry,
        masters: BoxStream<'static, Option<MasterRecord>>,
    ) -> bool {
        let session = registry.session_id();
        let mut masters = masters;
        let mut events = registry.events();
        let mut events_open = true;
        // The session state may already have moved on since the stream was created.
        events.mark_changed();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                item = masters.next() => match item {
                    Some(record) => self.publish(record),
                    None => return true,
                },
                changed = events.changed(), if events_open => {
                    if changed.is_err() {
                        // The session's event task ended (terminal state); the stream ends too.
                        events_open = false;
                        continue;
                    }
                    let event = *events.borrow_and_update();
                    match event {
                        SessionEvent::Connected => {
                            self.set_status(DiscoveryStatus::Connected { session });
                            self.zookeeper_back();
                        }
                        SessionEvent::Disconnected => {
                            self.set_status(DiscoveryStatus::Disconnected);
                            self.zookeeper_unreachable("connection to ZooKeeper lost");
                        }
                        SessionEvent::Expired | SessionEvent::Closed | SessionEvent::AuthFailed => {
                            self.set_status(DiscoveryStatus::SessionLost);
                        }
                    }
                }
            }
        }
    }

    /// Publishes `status` if it differs from the current one.
    fn set_status(&self, status: DiscoveryStatus) {
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }

    /// Publishes a new value of the master record (and its endpoints, if they changed).
    fn publish(&mut self, record: Option<MasterRecord>) {
        let endpoints = endpoints_of(record.as_ref());
        match &record {
            Some(r) => info!(
                group = %self.group,
                master = %r.container,
                epoch = r.epoch,
                ?endpoints,
                "discovered the group's master"
            ),
            None => info!(group = %self.group, "the group has no master at the moment"),
        }
        self.master.send_if_modified(|current| {
            if *current == record {
                false
            } else {
                *current = record;
                true
            }
        });
        self.endpoints.send_if_modified(|current| {
            if *current == endpoints {
                false
            } else {
                *current = endpoints;
                true
            }
        });
    }

    /// Logs (once per outage) that ZooKeeper cannot be reached and what is kept meanwhile.
    fn zookeeper_unreachable(&mut self, why: &str) {
        if self.outage.is_some() {
            debug!(group = %self.group, %why, "ZooKeeper still unreachable");
            return;
        }
        self.outage = Some(Instant::now());
        warn!(
            group = %self.group,
            zk = %self.config,
            %why,
            endpoints = ?*self.endpoints.borrow(),
            "ZooKeeper unreachable; keeping the last known endpoints until it answers again"
        );
    }

    /// Logs the end of an outage, if one was logged.
    fn zookeeper_back(&mut self) {
        if let Some(since) = self.outage.take() {
            info!(
                group = %self.group,
                zk = %self.config,
                after = ?since.elapsed(),
                "ZooKeeper reachable again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(services: &[&str]) -> MasterRecord {
        MasterRecord {
            container: "c1".into(),
            epoch: 3,
            services: services.iter().map(|s| s.to_string()).collect(),
            since: 0,
        }
    }

    #[test]
    fn endpoints_from_services() {
        assert!(endpoints_of(None).is_empty());
        let r = record(&[
            "stomp://127.0.0.1:61613",
            "tcp://broker-1.example.com:61614",
            "stomp://[::1]:5",
            "stomp://::1:6",
            "http://x:1",
            "stomp://bad host:1",
            "stomp://h:0",
            "stomp+ssl://127.0.0.1:61614",
        ]);
        assert_eq!(
            endpoints_of(Some(&r)),
            vec![
                ("127.0.0.1".to_string(), 61613),
                ("broker-1.example.com".to_string(), 61614),
                ("::1".to_string(), 5),
                ("::1".to_string(), 6),
                ("127.0.0.1".to_string(), 61614),
            ]
        );
        let tls: Vec<bool> = dial_endpoints(Some(&r)).iter().map(|e| e.tls).collect();
        assert_eq!(tls, vec![false, false, false, false, true]);
    }

    #[tokio::test]
    async fn bad_arguments_fail_before_connecting() {
        let err = Discovery::start("a/b", "127.0.0.1:1", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("group 'a/b'"), "{err}");
        let err = Discovery::start("g", "127.0.0.1:abc", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`zk`"), "{err}");
        let err = Discovery::start("g", "127.0.0.1:1", Some("fabric"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`zkRoot`"), "{err}");
        let url: BrokerUrl = "discovery:fabric:g".parse().unwrap();
        let err = Discovery::from_url(&url).await.unwrap_err();
        assert!(err.to_string().contains("no ZooKeeper"), "{err}");
        let url: BrokerUrl = "tcp://h:1".parse().unwrap();
        let err = Discovery::from_url(&url).await.unwrap_err();
        assert!(err.to_string().contains("not a discovery"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_zookeeper_fails_start_in_bounded_time() {
        // A port nobody listens on: connection refused, reported as unreachable.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = RegistryConfig::parse(&format!("127.0.0.1:{port}"))
            .unwrap()
            .with_connect_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let err = Discovery::start_with_config("g", config).await.unwrap_err();
        assert!(matches!(err, ClientError::Discovery { .. }), "{err:?}");
        assert!(err.to_string().contains("unreachable"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
