//! Human-readable output of `mq-fabric`: aligned tables with JBoss A-MQ style `[column]` headers,
//! status lines, profile blocks and short durations ("3m12s").
//!
//! Every function returns a `String` (tables end with a newline) so the layout is unit-tested.
//! Empty values print as `-`; lists are comma separated.

use std::time::Duration;

use fabricmq_registry::Profile;

use super::view::{ClusterView, ContainerView, Shortfall};

/// The note printed with a profile: running containers do not reload it.
pub const RESTART_NOTE: &str = "Changes take effect when a container of this profile restarts.";

/// A short human duration in whole seconds: `45s`, `3m12s`, `2h5m0s`, `3d4h12m` (days drop the
/// seconds).
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h{mins}m")
    } else if hours > 0 {
        format!("{hours}h{mins}m{secs}s")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// A table whose columns are as wide as their widest cell, two spaces apart, without trailing
/// spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (printed as `[header]`).
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| format!("[{h}]")).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; empty cells print as `-`. Missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        for c in &mut cells {
            if c.is_empty() {
                *c = "-".to_owned();
            }
        }
        self.rows.push(cells);
    }

    /// The table, header line first, every line ending with a newline.
    pub fn render(&self) -> String {
        let width = |i: usize| {
            std::iter::once(&self.headers[i])
                .chain(self.rows.iter().map(|r| &r[i]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                if i + 1 < line.len() {
                    let pad = widths[i] - cell.chars().count();
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The `cluster-list` table: `[cluster] [masters] [slaves] [services] [epoch] [master for]`.
pub fn cluster_table(clusters: &[ClusterView]) -> String {
    let mut t = Table::new(&[
        "cluster",
        "masters",
        "slaves",
        "services",
        "epoch",
        "master for",
    ]);
    for c in clusters {
        t.row(vec![
            c.cluster.clone(),
            c.master.clone().unwrap_or_default(),
            c.slaves.join(","),
            c.services.join(","),
            c.epoch.to_string(),
            c.serving_for_s
                .map(|s| format_age(Duration::from_secs(s)))
                .unwrap_or_default(),
        ]);
    }
    t.render()
}

/// The `container list` table: container, profile, group, role, host, pid, uptime.
pub fn container_table(containers: &[ContainerView]) -> String {
    let mut t = Table::new(&[
        "container",
        "profile",
        "group",
        "role",
        "host",
        "pid",
        "uptime",
    ]);
    for c in containers {
        t.row(vec![
            c.container.clone(),
            c.profile.clone().unwrap_or_default(),
            c.group.clone(),
            c.role.to_owned(),
            c.host.clone(),
            c.pid.to_string(),
            format_age(Duration::from_secs(c.uptime_s)),
        ]);
    }
    t.render()
}

/// `warning: profile tolerantbroker wants 2 containers, 1 live`.
pub fn shortfall_line(s: &Shortfall) -> String {
    let plural = if s.wants == 1 { "" } else { "s" };
    format!(
        "warning: profile {} wants {} container{plural}, {} live",
        s.profile, s.wants, s.live
    )
}

/// One `status` line: `default: master broker1 (epoch 7), 1 slave` or
/// `default: no master (last epoch 7), 2 slaves`.
pub fn status_line(c: &ClusterView) -> String {
    let n = c.slaves.len();
    let slaves = if n == 1 { "slave" } else { "slaves" };
    match &c.master {
        Some(m) => format!(
            "{}: master {m} (epoch {}), {n} {slaves}",
            c.cluster, c.epoch
        ),
        None => format!(
            "{}: no master (last epoch {}), {n} {slaves}",
            c.cluster, c.epoch
        ),
    }
}

/// The `profile list` table: name, group, kind, containers, listen, data.
pub fn profile_table(profiles: &[Profile]) -> String {
    let mut t = Table::new(&["name", "group", "kind", "containers", "listen", "data"]);
    for p in profiles {
        t.row(vec![
            p.name.clone(),
            p.group.clone(),
            p.kind.clone(),
            p.containers.to_string(),
            p.listen.join(","),
            p.data.clone(),
        ]);
    }
    t.render()
}

/// `profile show`: one `field: value` line per field (one line per listener), then a blank line
/// and [`RESTART_NOTE`].
pub fn profile_block(p: &Profile) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let label = if name.is_empty() {
            String::new()
        } else {
            format!("{name}:")
        };
        out.push_str(&format!("{label:<12}{value}\n"));
    };
    field("name", &p.name);
    field("group", &p.group);
    field("kind", &p.kind);
    field("containers", &p.containers.to_string());
    if p.listen.is_empty() {
        field("listen", "-");
    }
    for (i, url) in p.listen.iter().enumerate() {
        field(if i == 0 { "listen" } else { "" }, url);
    }
    field("data", &p.data);
    field("users", &or_dash(&p.users));
    field("config", &or_dash(&p.config));
    out.push('\n');
    out.push_str(RESTART_NOTE);
    out.push('\n');
    out
}

/// What `profile edit` changed, one `field: old -> new` line each (empty when nothing changed).
pub fn profile_changes(old: &Profile, new: &Profile) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let mut changes = Vec::new();
    let mut diff = |name: &str, a: String, b: String| {
        if a != b {
            changes.push(format!("{name}: {a} -> {b}"));
        }
    };
    diff("group", old.group.clone(), new.group.clone());
    diff("kind", old.kind.clone(), new.kind.clone());
    diff(
        "containers",
        old.containers.to_string(),
        new.containers.to_string(),
    );
    diff("listen", old.listen.join(","), new.listen.join(","));
    diff("data", old.data.clone(), new.data.clone());
    diff("users", opt(&old.users), opt(&new.users));
    diff("config", opt(&old.config), opt(&new.config));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::view::tests::{master, member, profile};
    use fabricmq_registry::MemberState;

    #[test]
    fn ages() {
        let s = |n| format_age(Duration::from_secs(n));
        assert_eq!(s(0), "0s");
        assert_eq!(s(59), "59s");
        assert_eq!(s(192), "3m12s");
        assert_eq!(s(3_600), "1h0m0s");
        assert_eq!(s(2 * 3_600 + 5 * 60 + 7), "2h5m7s");
        assert_eq!(s(3 * 86_400 + 4 * 3_600 + 12 * 60 + 59), "3d4h12m");
        assert_eq!(format_age(Duration::from_millis(1_999)), "1s");
    }

    #[test]
    fn table_layout() {
        let mut t = Table::new(&["a", "long header", "c"]);
        t.row(vec!["wide value".into(), String::new(), "x".into()]);
        t.row(vec!["v".into(), "y".into()]);
        assert_eq!(
            t.render(),
            "[a]         [long header]  [c]\n\
             wide value  -              x\n\
             v           y              -\n"
        );
        // Header only, no trailing spaces.
        assert_eq!(Table::new(&["x", "y"]).render(), "[x]  [y]\n");
    }

    #[test]
    fn cluster_list_layout() {
        let members = [
            member("broker1", 1, MemberState::Master, None, 0),
            member("broker2", 2, MemberState::Slave, None, 0),
            member("broker3", 3, MemberState::Slave, None, 0),
        ];
        let m = master("broker1", 7, 0);
        let up = ClusterView::new("default", &members, Some(&m), 7, 192_000);
        let down = ClusterView::new("orders", &members[1..2], None, 3, 192_000);
        assert_eq!(
            cluster_table(&[up, down]),
            "[cluster]  [masters]  [slaves]         [services]                                     [epoch]  [master for]\n\
             default    broker1    broker2,broker3  stomp://10.0.0.1:61613,stomp://10.0.0.1:61614  7        3m12s\n\
             orders     -          broker2          -                                              3        -\n"
        );
    }

    #[test]
    fn container_list_layout() {
        let now = 100_000;
        let c: Vec<ContainerView> = [
            member("broker1", 1, MemberState::Master, Some("tolerantbroker"), 0),
            member("b2", 2, MemberState::Activating, None, 95_000),
        ]
        .iter()
        .map(|m| ContainerView::new("default", m, now))
        .collect();
        assert_eq!(
            container_table(&c),
            "[container]  [profile]       [group]  [role]      [host]  [pid]  [uptime]\n\
             broker1      tolerantbroker  default  master      host-a  4242   1m40s\n\
             b2           -               default  activating  host-a  4242   5s\n"
        );
    }

    #[test]
    fn warning_and_status_lines() {
        let s = Shortfall {
            profile: "tolerantbroker".into(),
            wants: 2,
            live: 1,
        };
        assert_eq!(
            shortfall_line(&s),
            "warning: profile tolerantbroker wants 2 containers, 1 live"
        );
        let one = Shortfall {
            wants: 1,
            live: 0,
            ..s
        };
        assert_eq!(
            shortfall_line(&one),
            "warning: profile tolerantbroker wants 1 container, 0 live"
        );

        let members = [
            member("broker1", 1, MemberState::Master, None, 0),
            member("broker2", 2, MemberState::Slave, None, 0),
        ];
        let m = master("broker1", 7, 0);
        let up = ClusterView::new("default", &members, Some(&m), 7, 0);
        assert_eq!(
            status_line(&up),
            "default: master broker1 (epoch 7), 1 slave"
        );
        let down = ClusterView::new("default", &members, None, 7, 0);
        assert_eq!(
            status_line(&down),
            "default: no master (last epoch 7), 2 slaves"
        );
        let empty = ClusterView::new("x", &[], None, 0, 0);
        assert_eq!(status_line(&empty), "x: no master (last epoch 0), 0 slaves");
    }

    #[test]
    fn profile_layouts() {
        let mut p = profile("tolerantbroker", "default", 2);
        p.listen.push("tcp://0.0.0.0:61614".into());
        p.users = Some("/etc/mq/users.toml".into());
        assert_eq!(
            profile_table(std::slice::from_ref(&p)),
            "[name]          [group]  [kind]        [containers]  [listen]                                   [data]\n\
             tolerantbroker  default  master-slave  2             stomp://0.0.0.0:61613,tcp://0.0.0.0:61614  /srv/mq\n"
        );
        assert_eq!(
            profile_block(&p),
            "name:       tolerantbroker\n\
             group:      default\n\
             kind:       master-slave\n\
             containers: 2\n\
             listen:     stomp://0.0.0.0:61613\n\
             \x20           tcp://0.0.0.0:61614\n\
             data:       /srv/mq\n\
             users:      /etc/mq/users.toml\n\
             config:     -\n\
             \n\
             Changes take effect when a container of this profile restarts.\n"
        );
    }

    #[test]
    fn edit_changes() {
        let a = profile("p", "g", 2);
        let mut b = a.clone();
        assert!(profile_changes(&a, &b).is_empty());
        b.containers = 3;
        b.users = Some("/u".into());
        assert_eq!(
            profile_changes(&a, &b),
            vec!["containers: 2 -> 3", "users: - -> /u"]
        );
    }
}
