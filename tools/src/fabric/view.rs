//! What the commands show, derived from registry records without touching ZooKeeper.
//!
//! The commands read members, master records, epochs and profiles through
//! [`fabricmq_registry::Registry`] and hand them to the functions here, which are pure (the current
//! time is a parameter) so that tests can build any situation from fake records. The structs are
//! also the `--json` shapes: field names and order are part of the tool's interface.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fabricmq_registry::{MasterRecord, MemberInfo, MemberState, Profile};
use serde::Serialize;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Time from `since_ms` to `now_ms` (zero when `since_ms` is in the future: clock skew between
/// hosts).
pub fn elapsed(since_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(since_ms))
}

/// One cluster (group): a row of `cluster-list`, a line of `status`.
///
/// JSON: `{"cluster","master","slaves","services","epoch","since_ms","serving_for_s"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// Group name.
    pub cluster: String,
    /// Container named by the master record (`None`: no master right now).
    pub master: Option<String>,
    /// Live members other than the master, in sequence (seniority) order.
    pub slaves: Vec<String>,
    /// The master's service URLs (empty without a master).
    pub services: Vec<String>,
    /// The master's epoch, or without a master the group's last epoch (0: never had one).
    pub epoch: u64,
    /// When the master took over (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// How long the master has served, in whole seconds.
    pub serving_for_s: Option<u64>,
}

impl ClusterView {
    /// Builds the view of `group` from its members (in sequence order), its master record and its
    /// last epoch (used when there is no master).
    pub fn new(
        group: &str,
        members: &[MemberInfo],
        master: Option<&MasterRecord>,
        last_epoch: u64,
        now_ms: u64,
    ) -> Self {
        let master_name = master.map(|m| m.container.as_str());
        let mut seen = BTreeSet::new();
        let slaves = members
            .iter()
            .map(|m| m.record.container.as_str())
            .filter(|c| Some(*c) != master_name && seen.insert(*c))
            .map(str::to_owned)
            .collect();
        ClusterView {
            cluster: group.to_owned(),
            master: master.map(|m| m.container.clone()),
            slaves,
            services: master.map(|m| m.services.clone()).unwrap_or_default(),
            epoch: master.map_or(last_epoch, |m| m.epoch),
            since_ms: master.map(|m| m.since),
            serving_for_s: master.map(|m| elapsed(m.since, now_ms).as_secs()),
        }
    }
}

/// The `status --json` element for one group: `{"group","master","epoch","slaves"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusView {
    /// Group name.
    pub group: String,
    /// Current master, if any.
    pub master: Option<String>,
    /// The master's epoch, or the group's last epoch without a master.
    pub epoch: u64,
    /// Live members other than the master.
    pub slaves: Vec<String>,
}

impl From<&ClusterView> for StatusView {
    fn from(c: &ClusterView) -> Self {
        StatusView {
            group: c.cluster.clone(),
            master: c.master.clone(),
            epoch: c.epoch,
            slaves: c.slaves.clone(),
        }
    }
}

/// The role shown for a member (`master`, `slave`, `activating`).
pub fn role_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Master => "master",
        MemberState::Slave => "slave",
        MemberState::Activating => "activating",
    }
}

/// One live container (group member) of `container list`.
///
/// JSON: `{"container","profile","group","role","host","pid","started_ms","uptime_s"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerView {
    /// Container name.
    pub container: String,
    /// Profile it runs, if it said so.
    pub profile: Option<String>,
    /// Group it is a member of.
    pub group: String,
    /// `master`, `slave` or `activating`, as the member reports itself.
    pub role: &'static str,
    /// Host it runs on.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// Process start (ms since the Unix epoch).
    pub started_ms: u64,
    /// Seconds since the process started.
    pub uptime_s: u64,
}

impl ContainerView {
    /// The view of one member of `group`.
    pub fn new(group: &str, member: &MemberInfo, now_ms: u64) -> Self {
        let r = &member.record;
        ContainerView {
            container: r.container.clone(),
            profile: r.profile.clone(),
            group: group.to_owned(),
            role: role_name(r.state),
            host: r.host.clone(),
            pid: r.pid,
            started_ms: r.started,
            uptime_s: elapsed(r.started, now_ms).as_secs(),
        }
    }
}

/// A profile with fewer live containers than it asks for.
///
/// JSON: `{"profile","wants","live"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shortfall {
    /// Profile name.
    pub profile: String,
    /// Its `containers` value.
    pub wants: u32,
    /// Distinct live containers running it.
    pub live: u32,
}

/// The profiles (in the given order) that have fewer live containers than they ask for.
///
/// A container counts for a profile when its member record names the profile, or names none and
/// is a member of the profile's group (containers started without a profile). Each container
/// counts once per profile even if it has several member nodes.
pub fn shortfalls(profiles: &[Profile], containers: &[ContainerView]) -> Vec<Shortfall> {
    profiles
        .iter()
        .filter_map(|p| {
            let live: BTreeSet<&str> = containers
                .iter()
                .filter(|c| match &c.profile {
                    Some(name) => *name == p.name,
                    None => c.group == p.group,
                })
                .map(|c| c.container.as_str())
                .collect();
            let live = u32::try_from(live.len()).unwrap_or(u32::MAX);
            (live < p.containers).then(|| Shortfall {
                profile: p.name.clone(),
                wants: p.containers,
                live,
            })
        })
        .collect()
}

/// The `container list --json` value: `{"containers":[...],"warnings":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerList {
    /// Every live member of every group.
    pub containers: Vec<ContainerView>,
    /// Profiles short of containers.
    pub warnings: Vec<Shortfall>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fabricmq_registry::MemberRecord;

    /// A member record as a broker would publish it.
    pub(crate) fn member(
        container: &str,
        seq: u64,
        state: MemberState,
        profile: Option<&str>,
        started: u64,
    ) -> MemberInfo {
        MemberInfo {
            node: format!("{container}-{seq:010}"),
            seq,
            record: MemberRecord {
                container: container.to_owned(),
                host: "host-a".to_owned(),
                profile: profile.map(str::to_owned),
                state,
                epoch: None,
                ready: state == MemberState::Master,
                services: Vec::new(),
                started,
                pid: 4242,
                store_locked: false,
            },
            owner_session: 1,
        }
    }

    pub(crate) fn master(container: &str, epoch: u64, since: u64) -> MasterRecord {
        MasterRecord {
            container: container.to_owned(),
            epoch,
            services: vec![
                "stomp://10.0.0.1:61613".to_owned(),
                "stomp://10.0.0.1:61614".to_owned(),
            ],
            since,
        }
    }

    pub(crate) fn profile(name: &str, group: &str, containers: u32) -> Profile {
        Profile {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: "master-slave".to_owned(),
            containers,
            listen: vec!["stomp://0.0.0.0:61613".to_owned()],
            data: "/srv/mq".to_owned(),
            users: None,
            config: None,
        }
    }

    #[test]
    fn cluster_with_a_master() {
        let members = [
            member("broker1", 1, MemberState::Master, None, 0),
            member("broker2", 2, MemberState::Slave, None, 0),
            member("broker3", 3, MemberState::Activating, None, 0),
        ];
        let m = master("broker1", 7, 1_000);
        let v = ClusterView::new("default", &members, Some(&m), 9, 193_500);
        assert_eq!(v.master.as_deref(), Some("broker1"));
        assert_eq!(v.slaves, vec!["broker2", "broker3"]);
        assert_eq!(v.services.len(), 2);
        assert_eq!(v.epoch, 7, "the master's epoch, not the last one");
        assert_eq!(v.since_ms, Some(1_000));
        assert_eq!(v.serving_for_s, Some(192));
    }

    #[test]
    fn cluster_without_a_master() {
        let members = [
            member("broker2", 4, MemberState::Slave, None, 0),
            // A restarted container whose old node has not expired yet: listed once.
            member("broker1", 5, MemberState::Slave, None, 0),
            member("broker2", 6, MemberState::Slave, None, 0),
        ];
        let v = ClusterView::new("default", &members, None, 9, 0);
        assert_eq!(v.master, None);
        assert_eq!(v.slaves, vec!["broker2", "broker1"]);
        assert!(v.services.is_empty());
        assert_eq!((v.epoch, v.since_ms, v.serving_for_s), (9, None, None));
    }

    #[test]
    fn master_since_in_the_future_serves_for_zero() {
        let m = master("b", 1, 10_000);
        let v = ClusterView::new("g", &[], Some(&m), 1, 5_000);
        assert_eq!(v.serving_for_s, Some(0));
    }

    #[test]
    fn containers_and_shortfalls() {
        let now = 3_600_000;
        let c: Vec<ContainerView> = [
            member("b1", 1, MemberState::Master, Some("tolerantbroker"), 0),
            member("b1", 3, MemberState::Slave, Some("tolerantbroker"), 0),
            member("x1", 2, MemberState::Slave, None, now - 5_000),
        ]
        .iter()
        .map(|m| ContainerView::new("default", m, now))
        .collect();
        assert_eq!(c[0].role, "master");
        assert_eq!(c[1].role, "slave");
        assert_eq!(c[0].uptime_s, 3_600);
        assert_eq!(c[2].uptime_s, 5);

        let profiles = [
            profile("tolerantbroker", "other", 2), // b1 twice: 1 live
            profile("plain", "default", 1),        // x1 (no profile, same group)
            profile("empty", "nowhere", 1),
        ];
        let s = shortfalls(&profiles, &c);
        assert_eq!(
            s,
            vec![
                Shortfall {
                    profile: "tolerantbroker".into(),
                    wants: 2,
                    live: 1
                },
                Shortfall {
                    profile: "empty".into(),
                    wants: 1,
                    live: 0
                },
            ]
        );
    }

    #[test]
    fn json_shapes() {
        let m = master("broker1", 7, 1_000);
        let members = [
            member("broker1", 1, MemberState::Master, Some("p"), 500),
            member("broker2", 2, MemberState::Slave, Some("p"), 600),
        ];
        let v = ClusterView::new("default", &members, Some(&m), 7, 61_000);
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({
                "cluster": "default",
                "master": "broker1",
                "slaves": ["broker2"],
                "services": ["stomp://10.0.0.1:61613", "stomp://10.0.0.1:61614"],
                "epoch": 7,
                "since_ms": 1000,
                "serving_for_s": 60
            })
        );
        let none = ClusterView::new("g", &[], None, 0, 0);
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"cluster":"g","master":null,"slaves":[],"services":[],"epoch":0,"since_ms":null,"serving_for_s":null}"#
        );
        assert_eq!(
            serde_json::to_value(StatusView::from(&v)).unwrap(),
            serde_json::json!({"group": "default", "master": "broker1", "epoch": 7, "slaves": ["broker2"]})
        );
        let list = ContainerList {
            containers: vec![ContainerView::new("default", &members[1], 10_600)],
            warnings: vec![Shortfall {
                profile: "p".into(),
                wants: 3,
                live: 2,
            }],
        };
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            serde_json::json!({
                "containers": [{
                    "container": "broker2", "profile": "p", "group": "default", "role": "slave",
                    "host": "host-a", "pid": 4242, "started_ms": 600, "uptime_s": 10
                }],
                "warnings": [{"profile": "p", "wants": 3, "live": 2}]
            })
        );
    }
}
