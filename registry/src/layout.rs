//! The registry *layout*: node paths and the JSON records stored in them.
//!
//! This module owns the single definition of where things live under a registry root (default
//! [`DEFAULT_ROOT`]) and what the nodes contain, so the broker, client discovery and `mq-fabric`
//! agree on it. Every record is plain JSON (readable with `zkCli.sh get`):
//!
//! ```text
//! <root>/profiles/<profile>                                persistent  Profile JSON
//! <root>/registry/clusters/<group>/members/<container>-    ephemeral sequential  MemberRecord JSON
//! <root>/registry/clusters/<group>/master                  ephemeral   MasterRecord JSON
//! <root>/registry/clusters/<group>/epoch                   persistent  {"epoch": N}
//! <root>/registry/clusters/<group>/handover                persistent  HandoverRequest JSON (while one is pending)
//! ```
//!
//! Nothing here talks to ZooKeeper.

use serde::{Deserialize, Serialize};

/// Default root of every fabricmq node in ZooKeeper.
pub const DEFAULT_ROOT: &str = "/fabric";

/// Paths of the top-level nodes under one registry root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The root, without a trailing `/` (for example `/fabric`; empty for the chroot's own root).
    pub root: String,
}

impl Layout {
    /// Layout under `root` (for example `/fabric`; a trailing `/` is ignored).
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_end_matches('/').to_string(),
        }
    }

    /// `<root>/profiles`: parent of the profile nodes.
    pub fn profiles(&self) -> String {
        format!("{}/profiles", self.root)
    }

    /// `<root>/profiles/<name>`.
    pub fn profile(&self, name: &str) -> String {
        format!("{}/profiles/{name}", self.root)
    }

    /// `<root>/registry/clusters`: parent of the group nodes.
    pub fn clusters(&self) -> String {
        format!("{}/registry/clusters", self.root)
    }

    /// Paths of one group's nodes.
    pub fn group(&self, group: &str) -> GroupPaths {
        GroupPaths::new(&self.root, group)
    }
}

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

    /// Full path of the member node named `node` (for example `broker1-0000000003`).
    pub fn member(&self, node: &str) -> String {
        format!("{}/members/{node}", self.group)
    }

    /// The prefix a container's ephemeral sequential member node is created with
    /// (`.../members/<container>-`); ZooKeeper appends the 10-digit sequence.
    pub fn member_prefix(&self, container: &str) -> String {
        format!("{}/members/{container}-", self.group)
    }

    /// The ephemeral node holding the current master record.
    pub fn master(&self) -> String {
        format!("{}/master", self.group)
    }

    /// The persistent node holding the group's last epoch.
    pub fn epoch(&self) -> String {
        format!("{}/epoch", self.group)
    }

    /// The persistent node holding a pending controlled hand-over ([`HandoverRequest`]).
    pub fn handover(&self) -> String {
        format!("{}/handover", self.group)
    }
}

/// A request that the master `from` drain and step down (`mq-fabric master yield`), optionally
/// so that the slave `to` takes over. The master that is asked acts on it; slaves first in line
/// that are not `to` defer (rejoin at the back of the line) while it is pending; the master that
/// takes over removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverRequest {
    /// Unique id of this request.
    pub id: String,
    /// The container asked to step down (the master when the request was made).
    pub from: String,
    /// The container that should take over, if one was chosen.
    pub to: Option<String>,
    /// Milliseconds since the Unix epoch when it was requested.
    pub requested: u64,
}

/// Splits a member node name `<container>-<seq>` into its container and sequence number.
/// `None` if the name does not end in `-<digits>` (not a member node).
pub fn parse_member_node(node: &str) -> Option<(&str, u64)> {
    let (container, seq) = node.rsplit_once('-')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((container, seq.parse().ok()?))
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

/// Where a member stands in its group's election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Waiting in line; serves nothing.
    Slave,
    /// First in line, taking the store and claiming an epoch; not serving yet.
    Activating,
    /// Serving clients (its services are listed).
    Master,
}

/// The record a member publishes in its ephemeral sequential node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Container name (also the prefix of the node name).
    pub container: String,
    /// Host the container runs on.
    pub host: String,
    /// Profile the container was started from, if any.
    #[serde(default)]
    pub profile: Option<String>,
    /// Election state.
    pub state: MemberState,
    /// Epoch won, once activating/master.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Whether the member is ready (store opened / listeners up).
    #[serde(default)]
    pub ready: bool,
    /// Listener URLs once master (fabric8 habit: the master is the member with services listed).
    #[serde(default)]
    pub services: Vec<String>,
    /// Milliseconds since the Unix epoch when the process started.
    #[serde(default)]
    pub started: u64,
    /// Process id of the container.
    #[serde(default)]
    pub pid: u32,
    /// Whether this member holds the shared store's lock. Slaves read the lock's release as proof
    /// that the master's process died only when the master says it holds it (a master elected
    /// while a paused predecessor still held the lock does not, until it gets it).
    #[serde(default)]
    pub store_locked: bool,
}

/// A broker profile: how the containers of one master/slave group are configured. Unknown keys
/// are refused (a typo would otherwise be ignored by every container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name (also the node name under `<root>/profiles`).
    pub name: String,
    /// Group the containers of this profile join.
    pub group: String,
    /// Kind of deployment; `"master-slave"`.
    pub kind: String,
    /// Number of containers intended to run this profile.
    pub containers: u32,
    /// Listener URLs, e.g. `stomp://0.0.0.0:61613`.
    pub listen: Vec<String>,
    /// Shared data directory.
    pub data: String,
    /// Users file path.
    #[serde(default)]
    pub users: Option<String>,
    /// Extra broker TOML configuration file (optional).
    #[serde(default)]
    pub config: Option<String>,
}

/// Content of a group's epoch node: `{"epoch": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The last epoch claimed in the group.
    pub epoch: u64,
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
        assert_eq!(
            p.member_prefix("broker1"),
            "/fabric/registry/clusters/default/members/broker1-"
        );
        let l = Layout::new("/fabric");
        assert_eq!(l.profile("p1"), "/fabric/profiles/p1");
        assert_eq!(l.clusters(), "/fabric/registry/clusters");
        assert_eq!(l.group("default"), p);
    }

    #[test]
    fn member_node_names_parse() {
        assert_eq!(
            parse_member_node("broker1-0000000003"),
            Some(("broker1", 3))
        );
        assert_eq!(
            parse_member_node("my-broker-0000000010"),
            Some(("my-broker", 10))
        );
        assert_eq!(parse_member_node("broker1"), None);
        assert_eq!(parse_member_node("broker1-"), None);
        assert_eq!(parse_member_node("broker1-12a"), None);
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

    #[test]
    fn member_state_is_lowercase() {
        let json = serde_json::to_string(&MemberState::Activating).unwrap();
        assert_eq!(json, "\"activating\"");
    }
}
