//! The serving master keeps its own master record in place: [`Registry::guard_master`].
//!
//! The record a master publishes is the only thing that sends clients to it. Anyone allowed to
//! change the group's nodes (everyone, in a fabric run with `--zk-insecure`; a holder of the
//! credentials otherwise) can delete it (the group looks masterless) or rewrite it (clients are
//! sent elsewhere). The guard watches the node and, whenever it is not this session's record with
//! exactly the published content, puts it back, fenced as the first publish was: one multi that
//! checks the epoch node still has the claimed version, removes whatever is there and creates the
//! record again (ephemeral, this session). If the epoch moved on (a newer master, or someone
//! changed the epoch node) or the session may not write the node, the guard returns an error and
//! the master steps down; it never serves under a record it cannot vouch for.
//!
//! The guard also watches the epoch node: once its version is not the claim's any more (a newer
//! claim, or someone wrote it), the record no longer matches the group's epoch and clients ignore
//! it, so the guard returns an error and the master steps down (a new election follows).
//!
//! Invariants: the guard writes only while the epoch node has the claim's version; a record that
//! is intact (this session's ephemeral node, content equal to what was published, data version 0)
//! is never touched; every repair is logged at WARN.

use zookeeper_client as zk;

use crate::election::{read_node_and_watch, EpochClaim, FencedWrite};
use crate::error::RegistryError;
use crate::layout::{GroupPaths, MasterRecord};
use crate::session::{encode, Registry};

/// Outcome of one restore attempt.
enum Restore {
    Done,
    /// The master node changed between the read and the multi: read again.
    Raced,
}

impl Registry {
    /// Watches `group`'s master record while this session is master with `claim`, restoring
    /// `record` (logged at WARN) each time the node is deleted, rewritten or replaced. Runs until
    /// it cannot restore the record: returns [`RegistryError::BadVersion`] as soon as the group's
    /// epoch node no longer has the claim's version (watched too), [`RegistryError::NoAuth`] when this session may not
    /// write the node, [`RegistryError::SessionExpired`] when the session ends (the caller steps
    /// down in every case). Connection losses are ridden out. Cancel safe (drop it before removing
    /// the record on a clean stop).
    pub async fn guard_master(
        &self,
        group: &str,
        claim: EpochClaim,
        record: &MasterRecord,
    ) -> Result<(), RegistryError> {
        let paths = self.group_paths(group)?;
        let path = paths.master();
        let data = encode(&path, record)?;
        let mut events = self.events();
        loop {
            if self.is_ended() {
                return Err(RegistryError::SessionExpired);
            }
            let epoch_path = paths.epoch();
            let (master, epoch) = futures::future::join(
                read_node_and_watch(self, &path),
                read_node_and_watch(self, &epoch_path),
            )
            .await;
            let ((node, watcher), (epoch, epoch_watcher)) = match (master, epoch) {
                (Ok(m), Ok(e)) => (m, e),
                (Err(e), _) | (_, Err(e)) if e.is_transient() => {
                    self.ride_out(&e).await?;
                    continue;
                }
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            // The epoch node moved on (a newer claim, or someone wrote it): our record is no
            // longer the group's, and clients ignore it. Only a new term can fix that.
            if epoch.as_ref().map(|(_, stat)| stat.version) != Some(claim.version) {
                tracing::warn!(%group, node = %epoch_path, epoch = claim.epoch, "the group's epoch node changed while we are master");
                return Err(RegistryError::BadVersion { path: epoch_path });
            }
            let damage = match &node {
                None => Some("deleted".to_owned()),
                Some((_, stat)) if stat.ephemeral_owner != self.session_id() => Some(format!(
                    "replaced by another session ({:#x})",
                    stat.ephemeral_owner
                )),
                Some((found, _)) if *found != data => {
                    Some(format!("rewritten to {:?}", String::from_utf8_lossy(found)))
                }
                Some((_, stat)) if stat.version != 0 => {
                    Some("rewritten (same content, new version)".to_owned())
                }
                Some(_) => None,
            };
            let Some(damage) = damage else {
                tokio::select! {
                    event = watcher.changed() => {
                        if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                            return Err(RegistryError::SessionExpired);
                        }
                    }
                    event = epoch_watcher.changed() => {
                        if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                            return Err(RegistryError::SessionExpired);
                        }
                    }
                    _ = events.wait_for(|e| e.is_terminal()) => return Err(RegistryError::SessionExpired),
                }
                continue;
            };
            drop((watcher, epoch_watcher));
            tracing::warn!(%group, node = %path, %damage, epoch = claim.epoch, "our master record was changed by someone else: restoring it");
            let existing = node.map(|(_, stat)| stat.version);
            match self.restore_master(&paths, claim, &data, existing).await {
                Ok(Restore::Done) => {
                    tracing::warn!(%group, node = %path, epoch = claim.epoch, "master record restored")
                }
                Ok(Restore::Raced) => {}
                Err(e) if e.is_transient() => self.ride_out(&e).await?,
                Err(e) => {
                    tracing::warn!(%group, node = %path, error = %e, "cannot restore our master record");
                    return Err(e);
                }
            }
        }
    }

    /// Restores the master record: [`Registry::write_master_fenced`] replacing the node at
    /// version `existing` (if there is one).
    async fn restore_master(
        &self,
        paths: &GroupPaths,
        claim: EpochClaim,
        data: &[u8],
        existing: Option<i32>,
    ) -> Result<Restore, RegistryError> {
        match self
            .write_master_fenced(paths, claim, data, existing)
            .await?
        {
            FencedWrite::Done => Ok(Restore::Done),
            FencedWrite::Raced(
                zk::Error::BadVersion | zk::Error::NoNode | zk::Error::NodeExists,
            ) => Ok(Restore::Raced),
            FencedWrite::Raced(source) => {
                Err(RegistryError::from_zk("create", &paths.master(), source))
            }
        }
    }
}
