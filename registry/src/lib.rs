//! fabricmq's registry crate: the only crate that will talk to ZooKeeper.
//!
//! Until the fabric issue lands this crate owns only the registry *layout*: the node paths and the
//! JSON records that brokers publish and clients read. Keeping the layout here from the start means
//! the broker, the client's discovery and `mq-fabric` agree on one definition.

use serde::{Deserialize, Serialize};

/// Default root of every fabricmq node in ZooKeeper.
pub const DEFAULT_ROOT: &str = "/fabric";

/// Paths of the nodes a group uses, relative to a registry root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPaths {
    /// `<root>/registry/clusters/<group>`.
    pub group: String,
}

impl GroupPaths {
    /// Paths for `group` under `root` (for example `/fabric`).
    pub fn new(root: &str, group: &str) -> Self {
        let root = root.trim_end_matches('/');
        Self {
            group: format!("{root}/registry/clusters/{group}"),
        }
    }

    /// Parent of the ephemeral sequential member nodes.
    pub fn members(&self) -> String {
        format!("{}/members", self.group)
    }

    /// The ephemeral node holding the current master record.
    pub fn master(&self) -> String {
        format!("{}/master", self.group)
    }

    /// The persistent node holding the group's last epoch.
    pub fn epoch(&self) -> String {
        format!("{}/epoch", self.group)
    }
}

/// The record a serving master publishes: who it is and where clients connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterRecord {
    /// Container name of the master.
    pub container: String,
    /// Epoch the master won.
    pub epoch: u64,
    /// Client endpoints, e.g. `stomp://127.0.0.1:61613`.
    pub services: Vec<String>,
    /// Milliseconds since the Unix epoch when it became master.
    pub since: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        let p = GroupPaths::new("/fabric/", "default");
        assert_eq!(p.members(), "/fabric/registry/clusters/default/members");
        assert_eq!(p.master(), "/fabric/registry/clusters/default/master");
        assert_eq!(p.epoch(), "/fabric/registry/clusters/default/epoch");
    }

    #[test]
    fn master_record_is_plain_json() {
        let r = MasterRecord {
            container: "broker1".into(),
            epoch: 3,
            services: vec!["stomp://127.0.0.1:61613".into()],
            since: 1,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"services\":[\"stomp://127.0.0.1:61613\"]"));
        assert_eq!(serde_json::from_str::<MasterRecord>(&json).unwrap(), r);
    }
}
