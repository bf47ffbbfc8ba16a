//! Node ACLs: reading them, and repairing *open* ones to the secure ACL.
//!
//! A credentialed session creates every node with the secure ACL ("the authenticated identity:
//! all; anyone: read"). A node created earlier by a session without credentials (a fabric that was
//! secured later, or an attacker's pre-created group node) keeps `world:anyone` ALL: anyone who
//! can reach ZooKeeper may rewrite or delete it. This module owns the rule for "open" (an entry
//! for `world:anyone` with any right beyond READ) and the repair: `setACL` to the secure ACL,
//! fenced by the ACL version just read, one WARN line per repaired node and one per node that
//! cannot be repaired (this session lacks the ADMIN right on it), naming the node.
//!
//! Invariants: only a credentialed session repairs (the secure ACL names the session's own
//! identity, so an anonymous repair would lock everybody out); a node that is not open is never
//! touched, whoever owns it.

use zookeeper_client as zk;

use crate::error::RegistryError;
use crate::session::{Registry, SECURED_ACL};

/// One entry of a node's ACL, as ZooKeeper reports it (an `auth` entry is reported with the
/// identity it expanded to, e.g. `digest` / `user:hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    /// The scheme (`world`, `digest`, `ip`, ...).
    pub scheme: String,
    /// The identity within the scheme (`anyone`, `user:hash`, ...).
    pub id: String,
    /// The rights, as ZooKeeper names them (`ALL`, `READ`, `READ|WRITE`, ...).
    pub permissions: String,
    /// Whether the entry grants more than READ (WRITE, CREATE, DELETE or ADMIN).
    pub writes: bool,
}

impl AclEntry {
    fn from_zk(acl: &zk::Acl) -> Self {
        let p = acl.permission();
        AclEntry {
            scheme: acl.scheme().to_owned(),
            id: acl.id().to_owned(),
            permissions: p.to_string(),
            writes: [
                zk::Permission::WRITE,
                zk::Permission::CREATE,
                zk::Permission::DELETE,
                zk::Permission::ADMIN,
            ]
            .into_iter()
            .any(|right| p.has(right)),
        }
    }

    /// Whether this entry lets anyone (`world:anyone`) change the node or its children.
    pub fn is_open(&self) -> bool {
        self.scheme == "world" && self.id == "anyone" && self.writes
    }
}

/// What [`Registry::secure_nodes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclReport {
    /// Nodes that existed and were checked.
    pub checked: usize,
    /// Open nodes whose ACL was set to the secure one.
    pub repaired: Vec<String>,
    /// Open nodes this session could not repair, with the reason.
    pub unrepairable: Vec<(String, String)>,
}

impl AclReport {
    fn merge(&mut self, other: AclReport) {
        self.checked += other.checked;
        self.repaired.extend(other.repaired);
        self.unrepairable.extend(other.unrepairable);
    }
}

impl Registry {
    /// The ACL of `path` (relative to the chroot), `None` if the node does not exist.
    pub async fn acl(&self, path: &str) -> Result<Option<Vec<AclEntry>>, RegistryError> {
        let client = self.client()?;
        match self.timed("getACL", path, client.get_acl(path)).await {
            Ok((acls, _)) => Ok(Some(acls.iter().map(AclEntry::from_zk).collect())),
            Err(RegistryError::NoNode { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checks each of `paths` and sets the secure ACL on those that are open (see the module
    /// documentation). Missing nodes are skipped. Needs credentials
    /// ([`RegistryError::CredentialsRequired`] otherwise); connection and session errors end the
    /// pass, a node that cannot be repaired (not authorized) is reported and the pass goes on.
    pub async fn secure_nodes(&self, paths: &[String]) -> Result<AclReport, RegistryError> {
        if self.config().credentials.is_none() {
            return Err(RegistryError::CredentialsRequired {
                what: "repairing registry ACLs".into(),
            });
        }
        let client = self.client()?;
        let mut report = AclReport::default();
        for path in paths {
            // Two rounds at most: a concurrent ACL change (BadVersion) is read again once.
            for _ in 0..2 {
                let (acls, stat) = match self.timed("getACL", path, client.get_acl(path)).await {
                    Ok(found) => found,
                    Err(RegistryError::NoNode { .. }) => break,
                    Err(e) => return Err(e),
                };
                report.checked += 1;
                let open: Vec<AclEntry> = acls
                    .iter()
                    .map(AclEntry::from_zk)
                    .filter(AclEntry::is_open)
                    .collect();
                if open.is_empty() {
                    break;
                }
                let was = open
                    .iter()
                    .map(|e| format!("{}:{}:{}", e.scheme, e.id, e.permissions))
                    .collect::<Vec<_>>()
                    .join(",");
                match self
                    .timed(
                        "setACL",
                        path,
                        client.set_acl(path, &SECURED_ACL, Some(stat.aversion)),
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::warn!(
                            node = %path,
                            was = %was,
                            "repaired an open registry ACL: anyone could change this node; now only the fabric's credentials may (anyone may still read)"
                        );
                        report.repaired.push(path.clone());
                        break;
                    }
                    Err(RegistryError::BadVersion { .. }) => {
                        report.checked -= 1;
                        continue;
                    }
                    Err(RegistryError::NoNode { .. }) => {
                        report.checked -= 1;
                        break;
                    }
                    Err(e @ (RegistryError::NoAuth { .. } | RegistryError::Other { .. })) => {
                        tracing::warn!(
                            node = %path,
                            was = %was,
                            error = %e,
                            "REGISTRY NODE LEFT OPEN: anyone who can reach ZooKeeper may change it, and this process may not repair its ACL; set it with an identity allowed to (zkCli setAcl, or mq-fabric secure with the right credentials)"
                        );
                        report.unrepairable.push((path.clone(), e.to_string()));
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    /// [`secure_nodes`](Self::secure_nodes) over the nodes a container of `group` owns: the
    /// ancestors of the registry root and the root itself, `<root>/registry`,
    /// `<root>/registry/clusters`, `<root>/profiles` and the profile `profile` (if given), the
    /// group node, its members node and member nodes, its epoch, master and hand-over nodes.
    pub async fn secure_group(
        &self,
        group: &str,
        profile: Option<&str>,
    ) -> Result<AclReport, RegistryError> {
        let paths = self.group_paths(group)?;
        let layout = self.layout().clone();
        let mut nodes = root_chain(&layout.root);
        nodes.push(format!("{}/registry", layout.root));
        nodes.push(layout.clusters());
        nodes.push(layout.profiles());
        if let Some(p) = profile {
            nodes.push(layout.profile(p));
        }
        nodes.push(paths.group.clone());
        nodes.push(paths.members());
        for child in self.children(&paths.members()).await? {
            nodes.push(paths.member(&child));
        }
        nodes.extend([paths.epoch(), paths.master(), paths.handover()]);
        self.secure_nodes(&nodes).await
    }

    /// [`secure_nodes`](Self::secure_nodes) over the registry root's ancestors, the root and
    /// every node below it (`mq-fabric secure`).
    pub async fn secure_tree(&self) -> Result<AclReport, RegistryError> {
        let root = self.layout().root.clone();
        let mut report = self.secure_nodes(&root_chain(&root)).await?;
        // Breadth first; each level is repaired before its children are listed.
        let mut level = vec![root.clone()];
        if root.is_empty() {
            level = self
                .children("/")
                .await?
                .into_iter()
                .filter(|c| c != "zookeeper")
                .map(|c| format!("/{c}"))
                .collect();
            report.merge(self.secure_nodes(&level).await?);
        }
        while !level.is_empty() {
            let mut next = Vec::new();
            for parent in &level {
                for child in self.children(parent).await? {
                    next.push(format!("{parent}/{child}"));
                }
            }
            report.merge(self.secure_nodes(&next).await?);
            level = next;
        }
        Ok(report)
    }
}

/// `/a`, `/a/b`, ... up to and including `root` (empty for the chroot's own root).
fn root_chain(root: &str) -> Vec<String> {
    let mut chain = Vec::new();
    let mut path = String::new();
    for segment in root.split('/').filter(|s| !s.is_empty()) {
        path.push('/');
        path.push_str(segment);
        chain.push(path.clone());
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_chain_lists_every_ancestor() {
        assert_eq!(root_chain("/fabric"), vec!["/fabric"]);
        assert_eq!(root_chain("/a/b"), vec!["/a", "/a/b"]);
        assert!(root_chain("").is_empty());
    }

    #[test]
    fn only_world_write_rights_are_open() {
        let e = |scheme: &'static str, id: &'static str, p| {
            AclEntry::from_zk(&zk::Acl::new_const(p, scheme, id))
        };
        assert!(e("world", "anyone", zk::Permission::ALL).is_open());
        assert!(e("world", "anyone", zk::Permission::CREATE).is_open());
        assert!(!e("world", "anyone", zk::Permission::READ).is_open());
        assert!(!e("digest", "u:h", zk::Permission::ALL).is_open());
        assert_eq!(e("world", "anyone", zk::Permission::ALL).permissions, "ALL");
    }
}
