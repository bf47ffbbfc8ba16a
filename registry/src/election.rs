//! Groups and master election: membership (ephemeral sequential nodes), the herd-free wait for
//! the first place, epochs (a CAS counter), the fenced master record and its watch stream.
//!
//! The protocol a broker follows: [`Registry::join`] → [`Registry::wait_until_first`] →
//! [`Registry::next_epoch`] → [`Registry::publish_master`] (a multi that fails if anyone claimed a
//! newer epoch meanwhile) → serve, watching [`Registry::events`]. Discovery follows
//! [`Registry::watch_master`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::error::RegistryError;
use crate::layout::{parse_member_node, EpochRecord, GroupPaths, MasterRecord, MemberRecord};
use crate::session::{
    check_name, decode, encode, Inner, Registry, SessionEvent, EPHEMERAL, EPHEMERAL_SEQUENTIAL,
    PERSISTENT,
};

/// A member node this session created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The group joined.
    pub group: String,
    /// Node name, e.g. `"broker1-0000000003"`.
    pub node: String,
    /// The sequence number ZooKeeper assigned (election order).
    pub seq: u64,
}

/// A live member as listed by [`Registry::members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node name, e.g. `"broker1-0000000003"`.
    pub node: String,
    /// Sequence number (election order).
    pub seq: u64,
    /// The member's record.
    pub record: MemberRecord,
    /// Session id of the ZooKeeper session owning the node.
    pub owner_session: i64,
}

/// How [`Registry::write_master_fenced`] ended when the epoch still held.
#[derive(Debug)]
pub(crate) enum FencedWrite {
    /// The master record was written.
    Done,
    /// The delete or the create failed: another session changed the master node meanwhile.
    Raced(zk::Error),
}

/// An epoch won by CAS; `version` is the epoch node's version after the write (for the fenced
/// publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochClaim {
    /// The epoch won.
    pub epoch: u64,
    /// The epoch node's version right after our write.
    pub version: i32,
}

/// Pause before retrying after a transient error while the session still looks connected.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

enum Step {
    First,
    Wait(zk::OneshotWatcher),
    Again,
}

impl Registry {
    pub(crate) fn group_paths(&self, group: &str) -> Result<GroupPaths, RegistryError> {
        let paths = self.inner.layout.group(group);
        check_name("group", group, || paths.group.clone())?;
        Ok(paths)
    }

    /// Joins `group`: creates the ephemeral sequential node `<container>-<seq>` holding `record`
    /// (parents created on demand).
    pub async fn join(&self, group: &str, record: &MemberRecord) -> Result<Member, RegistryError> {
        let paths = self.group_paths(group)?;
        let prefix = paths.member_prefix(&record.container);
        check_name("container", &record.container, || prefix.clone())?;
        let data = encode(&prefix, record)?;
        let (_, seq) = self
            .create_with_parents(&prefix, &data, &EPHEMERAL_SEQUENTIAL)
            .await?;
        let node = format!("{}-{seq}", record.container);
        let path = paths.member(&node);
        self.inner
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone());
        tracing::info!(%group, %node, "joined the group");
        Ok(Member {
            group: group.to_string(),
            node,
            seq: seq.into_i64().max(0) as u64,
        })
    }

    /// Replaces the record in this session's member node. `NoNode` if it is gone.
    pub async fn update_member(
        &self,
        m: &Member,
        record: &MemberRecord,
    ) -> Result<(), RegistryError> {
        let path = self.group_paths(&m.group)?.member(&m.node);
        let data = encode(&path, record)?;
        let client = self.client()?;
        self.timed("set", &path, client.set_data(&path, &data, None))
            .await
            .map(|_| ())
    }

    /// Whether the member node still exists.
    pub async fn member_exists(&self, m: &Member) -> Result<bool, RegistryError> {
        let path = self.group_paths(&m.group)?.member(&m.node);
        let client = self.client()?;
        Ok(self
            .timed("exists", &path, client.check_stat(&path))
            .await?
            .is_some())
    }

    /// Member node names of `group` in sequence order, as `(seq, name)`. Children that are not
    /// member nodes are ignored. `None` if the members node does not exist.
    async fn member_nodes(
        &self,
        paths: &GroupPaths,
    ) -> Result<Option<Vec<(u64, String)>>, RegistryError> {
        let path = paths.members();
        let client = self.client()?;
        let children = match self.timed("list", &path, client.list_children(&path)).await {
            Ok(children) => children,
            Err(RegistryError::NoNode { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut nodes: Vec<(u64, String)> = children
            .into_iter()
            .filter_map(|name| parse_member_node(&name).map(|(_, seq)| (seq, name.clone())))
            .collect();
        nodes.sort();
        Ok(Some(nodes))
    }

    /// Reads one member node: `None` if it vanished.
    async fn member_info(
        &self,
        paths: &GroupPaths,
        seq: u64,
        node: &str,
    ) -> Result<Option<MemberInfo>, RegistryError> {
        let path = paths.member(node);
        Ok(self
            .get_json::<MemberRecord>(&path)
            .await?
            .map(|(record, stat)| MemberInfo {
                node: node.to_string(),
                seq,
                record,
                owner_session: stat.ephemeral_owner,
            }))
    }

    /// Live members of `group` in sequence order: node name, seq, record, owner session id.
    /// Empty if the group does not exist. Nodes that vanish while listing are left out, and so are
    /// nodes whose content is not a member record (logged).
    pub async fn members(&self, group: &str) -> Result<Vec<MemberInfo>, RegistryError> {
        let paths = self.group_paths(group)?;
        let Some(nodes) = self.member_nodes(&paths).await? else {
            return Ok(Vec::new());
        };
        let reads = nodes
            .iter()
            .map(|(seq, node)| self.member_info(&paths, *seq, node));
        let mut out = Vec::with_capacity(nodes.len());
        for read in futures::future::join_all(reads).await {
            match read {
                Ok(Some(info)) => out.push(info),
                Ok(None) => {}
                Err(RegistryError::Invalid { path, reason }) => {
                    tracing::warn!(%path, %reason, "ignoring a member node that is not a member record")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Resolves when `m` has the lowest sequence among live members (herd-free: watches only its
    /// predecessor via an exists-watch, re-evaluates on change). Returns `Err(SessionExpired)` if
    /// the session ends, `Err(NoNode)` if `m` itself vanished. Connection losses are ridden out
    /// (the call keeps waiting while the session lives). Cancel safe.
    pub async fn wait_until_first(&self, m: &Member) -> Result<(), RegistryError> {
        let paths = self.group_paths(&m.group)?;
        let mut events = self.events();
        loop {
            if self.is_ended() {
                return Err(RegistryError::SessionExpired);
            }
            match self.first_step(&paths, m).await {
                Ok(Step::First) => {
                    tracing::info!(group = %m.group, node = %m.node, "first in line");
                    return Ok(());
                }
                Ok(Step::Again) => {}
                Ok(Step::Wait(watcher)) => {
                    tokio::select! {
                        event = watcher.changed() => {
                            if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                                return Err(RegistryError::SessionExpired);
                            }
                        }
                        _ = events.wait_for(|e| e.is_terminal()) => return Err(RegistryError::SessionExpired),
                    }
                }
                Err(e) if e.is_transient() => self.ride_out(&e).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// After a transient error: waits for the connection to come back (bounded), or fails with
    /// `SessionExpired` if the session ends.
    pub(crate) async fn ride_out(&self, error: &RegistryError) -> Result<(), RegistryError> {
        tracing::debug!(%error, "transient ZooKeeper error; waiting for the connection");
        if self.state() == SessionEvent::Connected {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        self.wait_connected(self.inner.config.op_timeout).await
    }

    async fn first_step(&self, paths: &GroupPaths, m: &Member) -> Result<Step, RegistryError> {
        let my_path = paths.member(&m.node);
        let nodes = self.member_nodes(paths).await?.unwrap_or_default();
        let Some(i) = nodes.iter().position(|(_, name)| *name == m.node) else {
            return Err(RegistryError::NoNode { path: my_path });
        };
        if i == 0 {
            return Ok(Step::First);
        }
        let pred = paths.member(&nodes[i - 1].1);
        let client = self.client()?;
        let (stat, watcher) = self
            .timed("exists", &pred, client.check_and_watch_stat(&pred))
            .await?;
        let Some(stat) = stat else {
            return Ok(Step::Again);
        };
        if stat.ephemeral_owner == self.session_id() && !self.owns_member(&pred) {
            // Our own session created it, but no `join` returned it: a create whose answer was
            // lost with the connection. It would block us (and everyone after us) forever.
            tracing::warn!(node = %pred, "removing an orphaned member node of this session");
            match self.delete(&pred, None).await {
                Ok(()) | Err(RegistryError::NoNode { .. }) => {}
                Err(e) => return Err(e),
            }
            return Ok(Step::Again);
        }
        tracing::debug!(node = %m.node, predecessor = %pred, "waiting for the predecessor to go");
        Ok(Step::Wait(watcher))
    }

    fn owns_member(&self, path: &str) -> bool {
        self.inner
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(path)
    }

    /// The member just before `m` (`None` if `m` is first), for the fast-takeover logic.
    /// `NoNode` if `m` itself is gone.
    pub async fn predecessor(&self, m: &Member) -> Result<Option<MemberInfo>, RegistryError> {
        let paths = self.group_paths(&m.group)?;
        loop {
            let nodes = self.member_nodes(&paths).await?.unwrap_or_default();
            let Some(i) = nodes.iter().position(|(_, name)| *name == m.node) else {
                return Err(RegistryError::NoNode {
                    path: paths.member(&m.node),
                });
            };
            if i == 0 {
                return Ok(None);
            }
            let (seq, node) = &nodes[i - 1];
            if let Some(info) = self.member_info(&paths, *seq, node).await? {
                return Ok(Some(info));
            }
            // Vanished between the listing and the read: look again.
        }
    }

    /// Deletes another (dead) session's member node (fast takeover after the store lock proved
    /// the owner process dead). `NoNode` is `Ok`.
    pub async fn remove_member_node(&self, group: &str, node: &str) -> Result<(), RegistryError> {
        let paths = self.group_paths(group)?;
        let path = paths.member(node);
        check_name("member", node, || path.clone())?;
        match self.delete(&path, None).await {
            Ok(()) => {
                tracing::info!(%group, %node, "removed a member node");
                Ok(())
            }
            Err(RegistryError::NoNode { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `epoch := epoch + 1` by versioned setData (creates `{"epoch":1}` if missing). Retries when
    /// another session wins a race. The claim's `version` fences [`Registry::publish_master`].
    pub async fn next_epoch(&self, group: &str) -> Result<EpochClaim, RegistryError> {
        let path = self.group_paths(group)?.epoch();
        loop {
            match self.get(&path).await? {
                None => {
                    let data = encode(&path, &EpochRecord { epoch: 1 })?;
                    match self.create_with_parents(&path, &data, &PERSISTENT).await {
                        Ok((stat, _)) => {
                            return Ok(EpochClaim {
                                epoch: 1,
                                version: stat.version,
                            })
                        }
                        Err(RegistryError::NodeExists { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Some((data, stat)) => {
                    let epoch = parse_epoch(&path, &data)? + 1;
                    let data = encode(&path, &EpochRecord { epoch })?;
                    let client = self.client()?;
                    match self
                        .timed(
                            "set",
                            &path,
                            client.set_data(&path, &data, Some(stat.version)),
                        )
                        .await
                    {
                        Ok(stat) => {
                            tracing::info!(%group, epoch, "claimed a new epoch");
                            return Ok(EpochClaim {
                                epoch,
                                version: stat.version,
                            });
                        }
                        Err(RegistryError::BadVersion { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// The group's last claimed epoch (0 if none yet).
    pub async fn current_epoch(&self, group: &str) -> Result<u64, RegistryError> {
        let path = self.group_paths(group)?.epoch();
        match self.get(&path).await? {
            None => Ok(0),
            Some((data, _)) => parse_epoch(&path, &data),
        }
    }

    /// Atomically (one multi): checks the epoch node still has `claim.version` and creates the
    /// ephemeral master node with `record`. `BadVersion` => someone else claimed a newer epoch
    /// (we must not serve). `NodeExists` => a master node still exists (the caller may remove it
    /// once it proved its owner dead, then retry). A missing epoch node also gives `BadVersion`:
    /// the claim is no longer the group's current one.
    pub async fn publish_master(
        &self,
        group: &str,
        claim: EpochClaim,
        record: &MasterRecord,
    ) -> Result<(), RegistryError> {
        let paths = self.group_paths(group)?;
        let master_path = paths.master();
        if record.epoch != claim.epoch {
            tracing::warn!(
                record = record.epoch,
                claim = claim.epoch,
                "master record epoch differs from the claim"
            );
        }
        let data = encode(&master_path, record)?;
        match self.write_master_fenced(&paths, claim, &data, None).await? {
            FencedWrite::Done => {
                tracing::info!(%group, epoch = claim.epoch, container = %record.container, "published the master record");
                Ok(())
            }
            FencedWrite::Raced(source) => {
                Err(RegistryError::from_zk("create", &master_path, source))
            }
        }
    }

    /// One multi, the only way the master record is written: the epoch node still at
    /// `claim.version`; the master node at version `replace` deleted (when given); the master node
    /// created with `data` (ephemeral). `Err(BadVersion)` when the epoch node moved on or is gone
    /// (the claim is no longer the group's); `Ok(Raced(e))` when the delete or create failed
    /// (another session changed the master node meanwhile).
    pub(crate) async fn write_master_fenced(
        &self,
        paths: &GroupPaths,
        claim: EpochClaim,
        data: &[u8],
        replace: Option<i32>,
    ) -> Result<FencedWrite, RegistryError> {
        let (epoch_path, master_path) = (paths.epoch(), paths.master());
        let client = self.client()?;
        let mut writer = client.new_multi_writer();
        writer
            .add_check_version(&epoch_path, claim.version)
            .map_err(|e| RegistryError::from_zk("check", &epoch_path, e))?;
        if let Some(version) = replace {
            writer
                .add_delete(&master_path, Some(version))
                .map_err(|e| RegistryError::from_zk("delete", &master_path, e))?;
        }
        writer
            .add_create(&master_path, data, &self.create_options(EPHEMERAL))
            .map_err(|e| RegistryError::from_zk("create", &master_path, e))?;
        // Results are not used: a create inside a multi returns an invalid stat on 3.8.0.
        let after = self.inner.config.op_timeout;
        let Ok(result) = tokio::time::timeout(after, writer.commit()).await else {
            return Err(RegistryError::Timeout {
                op: "multi",
                path: master_path,
                after,
            });
        };
        match result {
            Ok(_) => Ok(FencedWrite::Done),
            Err(zk::MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::BadVersion | zk::Error::NoNode,
            }) => Err(RegistryError::BadVersion { path: epoch_path }),
            Err(zk::MultiWriteError::OperationFailed { index: 0, source }) => {
                Err(RegistryError::from_zk("check", &epoch_path, source))
            }
            Err(zk::MultiWriteError::OperationFailed { source, .. }) => {
                Ok(FencedWrite::Raced(source))
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                Err(RegistryError::from_zk("multi", &master_path, source))
            }
        }
    }

    /// Deletes the master node if this session owns it (first thing on a clean stop or step-down).
    /// `Ok` if there is none or another session owns it.
    pub async fn remove_master(&self, group: &str) -> Result<(), RegistryError> {
        let path = self.group_paths(group)?.master();
        loop {
            let Some((_, stat)) = self.get(&path).await? else {
                return Ok(());
            };
            if stat.ephemeral_owner != self.session_id() {
                return Ok(());
            }
            match self.delete(&path, Some(stat.version)).await {
                Ok(()) => {
                    tracing::info!(%group, "removed our master record");
                    return Ok(());
                }
                Err(RegistryError::NoNode { .. }) => return Ok(()),
                Err(RegistryError::BadVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes the master node whoever owns it (fast takeover of a crashed master). `NoNode` is
    /// `Ok`.
    pub async fn remove_master_any(&self, group: &str) -> Result<(), RegistryError> {
        let path = self.group_paths(group)?.master();
        match self.delete(&path, None).await {
            Ok(()) => {
                tracing::info!(%group, "removed the master record");
                Ok(())
            }
            Err(RegistryError::NoNode { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The current master record, `None` if there is no master node.
    pub async fn master(&self, group: &str) -> Result<Option<MasterRecord>, RegistryError> {
        let path = self.group_paths(group)?.master();
        Ok(self.get_json(&path).await?.map(|(record, _)| record))
    }

    /// Stream of the *genuine* master record: yields the current value first, then every change
    /// (appears / changes / disappears; consecutive equal values are yielded once). Watches (on
    /// the master node and on the epoch node) are re-armed across reconnects, and the nodes are
    /// re-read after any connection trouble. A master node with unreadable content counts as
    /// `None` (logged), and so does a record that is not genuine: its epoch differs from the
    /// group's epoch node, or its node was rewritten after it was created (see
    /// `read_and_watch`); clients then wait instead of connecting to where it points. Ends when the session expires or closes,
    /// including when every `Registry` clone is dropped (discovery then builds a new `Registry`).
    pub fn watch_master(
        &self,
        group: &str,
    ) -> impl Stream<Item = Option<MasterRecord>> + Send + 'static {
        let state = WatchState {
            registry: Arc::downgrade(&self.inner),
            events: self.events(),
            path: self.group_paths(group),
            last: None,
            watchers: None,
        };
        futures::stream::unfold(state, |mut state| async move {
            let value = state.next().await?;
            Some((value, state))
        })
    }

    /// All group names (children of `<root>/registry/clusters`), sorted.
    pub async fn groups(&self) -> Result<Vec<String>, RegistryError> {
        let mut groups = self.children(&self.inner.layout.clusters()).await?;
        groups.sort();
        Ok(groups)
    }
}

pub(crate) fn parse_epoch(path: &str, data: &[u8]) -> Result<u64, RegistryError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    decode::<EpochRecord>(path, data).map(|r| r.epoch)
}

struct WatchState {
    registry: Weak<Inner>,
    events: watch::Receiver<SessionEvent>,
    path: Result<GroupPaths, RegistryError>,
    last: Option<Option<MasterRecord>>,
    /// Armed on the master node and on the epoch node: either change means a re-read.
    watchers: Option<(zk::OneshotWatcher, zk::OneshotWatcher)>,
}

impl WatchState {
    /// The next distinct value, or `None` when the session is over.
    async fn next(&mut self) -> Option<Option<MasterRecord>> {
        let paths = match &self.path {
            Ok(paths) => paths.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "watch_master: bad group name");
                return None;
            }
        };
        loop {
            if let Some((master, epoch)) = self.watchers.take() {
                tokio::select! {
                    event = master.changed() => {
                        if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                            return None;
                        }
                    }
                    event = epoch.changed() => {
                        if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                            return None;
                        }
                    }
                    _ = self.events.wait_for(|e| e.is_terminal()) => return None,
                }
            }
            let registry = Registry {
                inner: self.registry.upgrade()?,
            };
            match read_and_watch(&registry, &paths).await {
                Ok((value, watchers)) => {
                    self.watchers = Some(watchers);
                    if self.last.as_ref() != Some(&value) {
                        self.last = Some(value.clone());
                        return Some(value);
                    }
                }
                Err(RegistryError::SessionExpired) => return None,
                Err(e) if e.is_transient() => {
                    if registry.ride_out(&e).await.is_err() {
                        return None;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, group = %paths.group, "watch_master: read failed; retrying");
                    tokio::time::sleep(registry.config().op_timeout).await;
                }
            }
            if registry.is_ended() {
                return None;
            }
        }
    }
}

/// Reads a node and leaves a watch on it (data watch if present, exists watch if not):
/// `(data and stat, or None if absent; the watcher)`.
pub(crate) async fn read_node_and_watch(
    registry: &Registry,
    path: &str,
) -> Result<(Option<(Vec<u8>, zk::Stat)>, zk::OneshotWatcher), RegistryError> {
    let client = registry.client()?;
    loop {
        match registry
            .timed("get", path, client.get_and_watch_data(path))
            .await
        {
            Ok((data, stat, watcher)) => return Ok((Some((data, stat)), watcher)),
            Err(RegistryError::NoNode { .. }) => {
                match registry
                    .timed("exists", path, client.check_and_watch_stat(path))
                    .await?
                {
                    (None, watcher) => return Ok((None, watcher)),
                    // Created in between: read it.
                    (Some(_), _) => continue,
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the master node and the epoch node together (one round trip: the two requests are
/// pipelined) and leaves a watch on each. The record counts only if it is *genuine*: its epoch
/// is the epoch node's and the node was never rewritten (a master creates its record and never
/// sets it, so its data version is 0). Anything else (a record rewritten to another endpoint, a
/// record older than the epoch node, an epoch claimed without a record yet) reads as "no master
/// known": clients wait for the genuine one instead of connecting elsewhere.
async fn read_and_watch(
    registry: &Registry,
    paths: &GroupPaths,
) -> Result<
    (
        Option<MasterRecord>,
        (zk::OneshotWatcher, zk::OneshotWatcher),
    ),
    RegistryError,
> {
    let (master_path, epoch_path) = (paths.master(), paths.epoch());
    let (master, epoch) = futures::future::join(
        read_node_and_watch(registry, &master_path),
        read_node_and_watch(registry, &epoch_path),
    )
    .await;
    let ((master, master_watch), (epoch, epoch_watch)) = (master?, epoch?);
    let value = match master {
        None => None,
        Some((data, stat)) => match decode::<MasterRecord>(&master_path, &data) {
            Err(e) => {
                tracing::warn!(error = %e, "unreadable master record; treating as no master");
                None
            }
            Ok(record) => {
                let epoch = match &epoch {
                    None => Ok(0),
                    Some((data, _)) => parse_epoch(&epoch_path, data),
                };
                match epoch {
                    Ok(epoch) if epoch == record.epoch && stat.version == 0 => Some(record),
                    Ok(epoch) => {
                        tracing::warn!(
                            group = %paths.group,
                            record_epoch = record.epoch,
                            group_epoch = epoch,
                            record_version = stat.version,
                            container = %record.container,
                            services = ?record.services,
                            "ignoring a master record that is not the genuine one (its epoch is not the group's, or it was rewritten); waiting for the master to publish"
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable epoch node; treating as no master");
                        None
                    }
                }
            }
        },
    };
    Ok((value, (master_watch, epoch_watch)))
}
