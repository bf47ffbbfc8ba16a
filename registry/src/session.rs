//! The ZooKeeper session: [`Registry`] (connect, state events, close) and the plumbing every
//! operation goes through (operation timeout, error mapping, parents on demand, JSON codec).
//!
//! One `Registry` is one ZooKeeper session; clones share it. The session ends when [`Registry::close`]
//! is called, when the last clone is dropped, or when ZooKeeper expires it; after that every call
//! fails with [`RegistryError::SessionExpired`] and the caller builds a new `Registry`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::config::RegistryConfig;
use crate::error::RegistryError;
use crate::layout::Layout;

/// The ACL of nodes created by an authenticated session: its own identity may do anything,
/// anyone may read (brokers and `mq-fabric` write, discovery clients only read).
pub(crate) static SECURED_ACL: [zk::Acl; 2] = [
    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
    zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
];

/// How nodes are created: persistent, ephemeral or ephemeral sequential, with the open ACL for
/// a session without credentials and [`SECURED_ACL`] for one with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NodeKind {
    Persistent,
    Ephemeral,
    EphemeralSequential,
}

pub(crate) use NodeKind::{
    Ephemeral as EPHEMERAL, EphemeralSequential as EPHEMERAL_SEQUENTIAL, Persistent as PERSISTENT,
};

impl NodeKind {
    fn options(self, secured: bool) -> zk::CreateOptions<'static> {
        let mode = match self {
            NodeKind::Persistent => zk::CreateMode::Persistent,
            NodeKind::Ephemeral => zk::CreateMode::Ephemeral,
            NodeKind::EphemeralSequential => zk::CreateMode::EphemeralSequential,
        };
        if secured {
            mode.with_acls(zk::Acls::new(&SECURED_ACL))
        } else {
            mode.with_acls(zk::Acls::anyone_all())
        }
    }
}

/// Session state changes, as seen by this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// Connected to a server; the session is alive.
    Connected,
    /// The connection is lost (or hung); the session may still be alive on the server. A master
    /// must stop acknowledging until `Connected` again.
    Disconnected,
    /// Terminal: the session expired (its ephemeral nodes are gone or going). Build a new
    /// `Registry` and re-contend.
    Expired,
    /// Terminal: the session was closed by this process.
    Closed,
    /// Terminal: authentication failed.
    AuthFailed,
}

impl SessionEvent {
    /// Whether no further event can follow (`Expired`, `Closed`, `AuthFailed`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SessionEvent::Expired | SessionEvent::Closed | SessionEvent::AuthFailed
        )
    }

    fn from_zk(state: zk::SessionState) -> Self {
        match state {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                SessionEvent::Connected
            }
            zk::SessionState::Disconnected => SessionEvent::Disconnected,
            zk::SessionState::Expired => SessionEvent::Expired,
            zk::SessionState::Closed => SessionEvent::Closed,
            zk::SessionState::AuthFailed => SessionEvent::AuthFailed,
        }
    }
}

/// A ZooKeeper session holding fabricmq's registry: groups, election, master records, profiles.
/// Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RegistryConfig,
    pub(crate) layout: Layout,
    session_id: i64,
    session_timeout: Duration,
    /// `None` once closed. Operations clone the client out, so dropping this one closes the session
    /// once in-flight operations finish (each bounded by the operation timeout).
    client: RwLock<Option<zk::Client>>,
    events: watch::Receiver<SessionEvent>,
    /// Full paths of the member nodes this session created (orphans of failed joins are not here).
    pub(crate) members: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("servers", &self.inner.config.to_string())
            .field("root", &self.inner.layout.root)
            .field("session_id", &format_args!("{:#x}", self.inner.session_id))
            .field("state", &*self.inner.events.borrow())
            .finish()
    }
}

impl Registry {
    /// Connects (bounded by `connect_timeout`; ZooKeeper down or not answering =>
    /// [`RegistryError::Unreachable`], no hang, no busy retry), then creates the chroot if missing.
    pub async fn connect(config: RegistryConfig) -> Result<Registry, RegistryError> {
        let root = config.normalized_root()?;
        if config.servers.is_empty() {
            return Err(RegistryError::Config {
                input: config.to_string(),
                reason: "no servers".into(),
            });
        }
        let servers = config.servers_string();
        let started = Instant::now();
        let mut connector = zk::Client::connector();
        connector = connector.with_session_timeout(config.session_timeout);
        if let Some(c) = &config.credentials {
            connector =
                connector.with_auth("digest", format!("{}:{}", c.user, c.password).as_bytes());
        }
        let secured = config.credentials.is_some();
        let connecting = connector.connect(&servers);
        let client = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Ok(Ok(client)) => client,
            Err(_elapsed) => {
                return Err(RegistryError::Unreachable {
                    servers,
                    after: config.connect_timeout,
                })
            }
            Ok(Err(
                e @ (zk::Error::Timeout
                | zk::Error::NoHosts
                | zk::Error::ConnectionLoss
                | zk::Error::Custom(_)),
            )) => {
                tracing::debug!(%servers, error = %e, "ZooKeeper connect failed");
                return Err(RegistryError::Unreachable {
                    servers,
                    after: started.elapsed(),
                });
            }
            Ok(Err(e)) => return Err(RegistryError::from_zk("connect", &servers, e)),
        };
        let session_id = client.session_id().0;
        let session_timeout = client.session_timeout();
        let client = match &config.chroot {
            None => client,
            Some(chroot) => {
                let options = PERSISTENT.options(secured);
                match tokio::time::timeout(config.op_timeout, client.mkdir(chroot, &options)).await
                {
                    Ok(Ok(())) => {}
                    // Not fatal: without the right to create it, operations report the problem.
                    Ok(Err(e)) => tracing::warn!(%chroot, error = %e, "cannot create the chroot"),
                    Err(_) => {
                        return Err(RegistryError::Timeout {
                            op: "create",
                            path: chroot.clone(),
                            after: config.op_timeout,
                        })
                    }
                }
                client
                    .chroot(chroot.as_str())
                    .map_err(|_| RegistryError::Config {
                        input: config.to_string(),
                        reason: format!("bad chroot {chroot:?}"),
                    })?
            }
        };
        let mut states = client.state_watcher();
        let (tx, events) = watch::channel(SessionEvent::from_zk(client.state()));
        tokio::spawn(async move {
            loop {
                let event = SessionEvent::from_zk(states.changed().await);
                tracing::info!(session = %format_args!("{session_id:#x}"), ?event, "ZooKeeper session event");
                tx.send_replace(event);
                if event.is_terminal() {
                    break;
                }
            }
        });
        tracing::info!(
            servers = %config,
            session = %format_args!("{session_id:#x}"),
            timeout_ms = session_timeout.as_millis() as u64,
            "ZooKeeper session established"
        );
        Ok(Registry {
            inner: Arc::new(Inner {
                layout: Layout { root },
                config,
                session_id,
                session_timeout,
                client: RwLock::new(Some(client)),
                events,
                members: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The configuration this registry was connected with.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// The node layout under the configured root.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The ZooKeeper session id (the `ephemeralOwner` of this session's nodes).
    pub fn session_id(&self) -> i64 {
        self.inner.session_id
    }

    /// The session timeout the server granted (may differ from the requested one).
    pub fn negotiated_session_timeout(&self) -> Duration {
        self.inner.session_timeout
    }

    /// Session state as a watch channel: `Connected` / `Disconnected` (connection lost, session may
    /// still be alive) / `Expired` (terminal: build a new `Registry` and re-contend) / `Closed`.
    pub fn events(&self) -> watch::Receiver<SessionEvent> {
        self.inner.events.clone()
    }

    /// The current session state.
    pub fn state(&self) -> SessionEvent {
        *self.inner.events.borrow()
    }

    /// Closes the session: its ephemeral nodes (member, master) vanish at once. Waits (at most the
    /// operation timeout) for ZooKeeper to confirm. Calls made afterwards fail with
    /// [`RegistryError::SessionExpired`].
    pub async fn close(&self) {
        let client = self
            .inner
            .client
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(client) = client else { return };
        tracing::info!(session = %format_args!("{:#x}", self.inner.session_id), "closing ZooKeeper session");
        drop(client);
        let mut events = self.events();
        let closed = async move { events.wait_for(|e| e.is_terminal()).await.is_ok() };
        if tokio::time::timeout(self.inner.config.op_timeout, closed)
            .await
            .is_err()
        {
            tracing::warn!("ZooKeeper did not confirm the session close in time");
        }
    }

    /// A clone of the library client, or `SessionExpired` once closed.
    pub(crate) fn client(&self) -> Result<zk::Client, RegistryError> {
        self.inner
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(RegistryError::SessionExpired)
    }

    /// Runs one ZooKeeper call bounded by the operation timeout, mapping its error.
    pub(crate) async fn timed<T>(
        &self,
        op: &'static str,
        path: &str,
        call: impl Future<Output = Result<T, zk::Error>>,
    ) -> Result<T, RegistryError> {
        let after = self.inner.config.op_timeout;
        match tokio::time::timeout(after, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RegistryError::from_zk(op, path, e)),
            Err(_) => {
                tracing::debug!(op, path, ?after, "ZooKeeper call timed out");
                Err(RegistryError::Timeout {
                    op,
                    path: path.to_string(),
                    after,
                })
            }
        }
    }

    /// Create options for `kind` with this session's ACL (open, or [`SECURED_ACL`] when it has
    /// credentials).
    pub(crate) fn create_options(&self, kind: NodeKind) -> zk::CreateOptions<'static> {
        kind.options(self.inner.config.credentials.is_some())
    }

    /// Reads a node: `None` if it does not exist.
    pub(crate) async fn get(
        &self,
        path: &str,
    ) -> Result<Option<(Vec<u8>, zk::Stat)>, RegistryError> {
        let client = self.client()?;
        match self.timed("get", path, client.get_data(path)).await {
            Ok(found) => Ok(Some(found)),
            Err(RegistryError::NoNode { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists a node's children: empty if the node does not exist.
    pub(crate) async fn children(&self, path: &str) -> Result<Vec<String>, RegistryError> {
        let client = self.client()?;
        match self.timed("list", path, client.list_children(path)).await {
            Ok(children) => Ok(children),
            Err(RegistryError::NoNode { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Creates `path` and its missing ancestors as persistent nodes with empty data (`mkdir -p`;
    /// races with other creators are fine).
    pub(crate) async fn ensure_path(&self, path: &str) -> Result<(), RegistryError> {
        let client = self.client()?;
        let options = self.create_options(PERSISTENT);
        self.timed("create", path, client.mkdir(path, &options))
            .await
    }

    /// Creates a node, creating missing parents first if needed. Returns the stat and the
    /// sequence suffix ZooKeeper appended (zero-padded as in the node name; sequential modes only).
    pub(crate) async fn create_with_parents(
        &self,
        path: &str,
        data: &[u8],
        kind: &NodeKind,
    ) -> Result<(zk::Stat, zk::CreateSequence), RegistryError> {
        let client = self.client()?;
        let options = self.create_options(*kind);
        let options = &options;
        match self
            .timed("create", path, client.create(path, data, options))
            .await
        {
            Err(RegistryError::NoNode { .. }) => {
                let parent = parent_of(path);
                if !parent.is_empty() {
                    self.ensure_path(parent).await?;
                }
                self.timed("create", path, client.create(path, data, options))
                    .await
            }
            other => other,
        }
    }

    /// Writes `data` to the persistent node `path`, creating it (and missing parents) if needed;
    /// a node created by someone else in between is overwritten.
    pub(crate) async fn put_persistent(
        &self,
        path: &str,
        data: &[u8],
    ) -> Result<(), RegistryError> {
        loop {
            let client = self.client()?;
            match self
                .timed("set", path, client.set_data(path, data, None))
                .await
            {
                Ok(_) => return Ok(()),
                Err(RegistryError::NoNode { .. }) => {}
                Err(e) => return Err(e),
            }
            match self.create_with_parents(path, data, &PERSISTENT).await {
                Ok(_) => return Ok(()),
                Err(RegistryError::NodeExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes a node (any version). `NoNode` is an error here.
    pub(crate) async fn delete(
        &self,
        path: &str,
        version: Option<i32>,
    ) -> Result<(), RegistryError> {
        let client = self.client()?;
        self.timed("delete", path, client.delete(path, version))
            .await
    }

    /// Waits until the session is `Connected` (after a transient error), at most `limit`.
    /// `Err(SessionExpired)` if the session ends meanwhile.
    pub(crate) async fn wait_connected(&self, limit: Duration) -> Result<(), RegistryError> {
        let mut events = self.events();
        let connected = async move {
            events
                .wait_for(|e| *e == SessionEvent::Connected || e.is_terminal())
                .await
                .map(|e| *e)
        };
        match tokio::time::timeout(limit, connected).await {
            Ok(Ok(SessionEvent::Connected)) => Ok(()),
            Ok(_) => Err(RegistryError::SessionExpired),
            // Still disconnected: the caller retries (its next call is bounded again).
            Err(_) => Ok(()),
        }
    }

    /// Whether the session has ended (or this registry was closed).
    pub(crate) fn is_ended(&self) -> bool {
        self.state().is_terminal()
            || self
                .inner
                .client
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
    }

    /// Reads and parses a JSON node: `None` if absent, `Invalid` if not the expected JSON.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<(T, zk::Stat)>, RegistryError> {
        match self.get(path).await? {
            None => Ok(None),
            Some((data, stat)) => Ok(Some((decode(path, &data)?, stat))),
        }
    }

    /// The raw bytes stored in `path` (relative to the chroot), `None` if the node does not exist:
    /// for diagnostics (`mq-fabric`) and tests.
    pub async fn raw_data(&self, path: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        check_path(path)?;
        Ok(self.get(path).await?.map(|(data, _)| data))
    }

    /// Overwrites the data of the existing node `path` (relative to the chroot), any version: for
    /// diagnostics and the tests that play an intruder. `NoNode` if it does not exist, `NoAuth`
    /// if its ACL does not let this session write.
    pub async fn raw_set(&self, path: &str, data: &[u8]) -> Result<(), RegistryError> {
        check_path(path)?;
        let client = self.client()?;
        self.timed("set", path, client.set_data(path, data, None))
            .await
            .map(|_| ())
    }

    /// Deletes the node `path` (relative to the chroot), any version: for diagnostics and the
    /// tests that play an intruder. `NoNode` if it does not exist.
    pub async fn raw_delete(&self, path: &str) -> Result<(), RegistryError> {
        check_path(path)?;
        self.delete(path, None).await
    }

    /// The children of `path` (relative to the chroot), sorted; empty if the node does not exist.
    pub async fn raw_children(&self, path: &str) -> Result<Vec<String>, RegistryError> {
        check_path(path)?;
        let mut children = self.children(path).await?;
        children.sort();
        Ok(children)
    }
}

fn check_path(path: &str) -> Result<(), RegistryError> {
    if path == "/" {
        return Ok(());
    }
    crate::config::validate_path(path).map_err(|reason| RegistryError::Invalid {
        path: path.to_string(),
        reason,
    })
}

/// The parent of an absolute path (`""` for a child of `/`).
pub(crate) fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    }
}

/// Serializes a record to the JSON stored in a node.
pub(crate) fn encode<T: Serialize>(path: &str, value: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value).map_err(|e| RegistryError::Invalid {
        path: path.to_string(),
        reason: format!("cannot encode JSON: {e}"),
    })
}

/// Parses the JSON stored in a node.
pub(crate) fn decode<T: DeserializeOwned>(path: &str, data: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(data).map_err(|e| RegistryError::Invalid {
        path: path.to_string(),
        reason: format!("not the expected JSON: {e}"),
    })
}

/// Checks a name used as one path segment (group, container, profile).
pub(crate) fn check_name(
    what: &str,
    name: &str,
    path: impl FnOnce() -> String,
) -> Result<(), RegistryError> {
    crate::config::validate_name(name).map_err(|why| RegistryError::Invalid {
        path: path(),
        reason: format!("bad {what} name: {why}"),
    })
}
